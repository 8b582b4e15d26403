"""The benchmark harness behind ``make bench``: Lockgate against a bare forwarder and the upstream itself.

``python -m tests.benchmarks.run --help`` lists the options; ``docs/benchmarks.md`` holds the method
and the latest figures.
"""
