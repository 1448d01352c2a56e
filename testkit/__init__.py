"""What the tests and the benchmarks share: our server on loopback and synthetic stays
(`helpers`), a private PostgreSQL (`private_postgres`), the kill -9 harness (`durability`), the
schemathesis runner (`fuzzing`) and hand-written vendor payloads (`vendor_payloads`). Test and
benchmark support only: not part of the product, the wheel or the image."""
