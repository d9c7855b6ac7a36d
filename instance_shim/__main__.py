from mcpmux.shim.shim import main

main()
