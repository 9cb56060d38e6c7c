"""Plain reference implementations, written apart from sdlib and from the paper's formulas only: the tests hold
sdlib's loss equal to them and the benchmarks time sdlib against them."""
