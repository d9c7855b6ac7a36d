from mcpmux.monitor.cli import main

main()
