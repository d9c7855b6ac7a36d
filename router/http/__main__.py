from mcpmux.router.http.serve import main

main()
