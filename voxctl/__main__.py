from voxctl.app import main

main()
