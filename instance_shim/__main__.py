from instance_shim.shim import main

main()
