from mcpmux.shim.startup import main

main()
