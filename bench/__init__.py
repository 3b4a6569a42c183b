"""The benchmark programs, in a room of their own: `make bench` runs them on the full data.

    python -m bench.train  --data creditcard.csv.gz   # training time per stage, test AUPRC with intervals
    python -m bench.stream --data creditcard.csv.gz   # end-to-end streaming, latency, CPU per event
    python -m bench.api    --data creditcard.csv.gz   # API latency per endpoint, predict vs heartbeat

They import the producer, the scorer, training and the API together, which the services
themselves never do (nothing outside `bench/` imports it). Shared pieces: `bench.machine`
(the machine line and the load average every table prints), `bench.tables` (printing),
`bench.cpu` (CPU seconds per process group), `bench.stack` (a quick bundle, the repo root).
"""
