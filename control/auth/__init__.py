"""Authentication and authorization: password hashing (`passwords`), JWTs (`tokens`), the
per-RPC access rules declared in the protos (`rules`), the caller of the current RPC
(`principal`), and the guard that enforces them in one place (`guard`)."""
