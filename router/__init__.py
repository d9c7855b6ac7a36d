"""The router: the stdio door a client starts, and the dispatching core shared by every door of a stack."""
