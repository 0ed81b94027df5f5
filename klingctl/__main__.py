from klingctl.cli import main

main()
