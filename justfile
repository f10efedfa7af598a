# Developer recipes. `just ci` runs exactly what CI runs.

default:
    @just --list

# Run the service on the embedded default (./data, 127.0.0.1:8080).
run:
    cargo run --release -- serve

# All tests (the README's test command).
test:
    cargo test --workspace

# What CI runs (.ci/run): fmt, clippy, schemathesis against a running server, tests.
ci:
    bash .ci/run

fmt:
    cargo fmt --all

lint:
    cargo clippy --workspace --all-targets -- -D warnings

# A long crash loop: the service is SIGKILLed 1000 times under load; invariants checked each time.
soak iterations="1000":
    KEYLEDGER_CRASH_ITERATIONS={{iterations}} cargo test --release -p keyledger --test crash

# Benchmarks (docs/BENCHMARKS.md): criterion benches of the in-process paths, then the load
# generator against the real server, which prints the table. `just bench 1M`; `just bench 1k --quick`.
bench keys="100k" *args="":
    cargo bench -p keyledger-core -p keyledger-store -p keyledger-service --bench core --bench envelope --bench verify
    cargo run --release -p keyledger-bench -- --keys {{keys}} {{args}}
