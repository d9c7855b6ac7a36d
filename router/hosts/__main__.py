from mcpmux.router.hosts.agent import main

main()
