from mobilenet_zoo.cli import main

main()
