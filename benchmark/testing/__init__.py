"""What the tests and the scripts share: small stand-ins built offline (random weights of real
architectures), never used by a benchmark run."""
