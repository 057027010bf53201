"""What the tests' launches of sfs share."""

# One trial at a time: each concurrent trial is one more worker importing torch and Lightning
# (~5 s of CPU), and the test tiers are CPU-bound on 2 cores.
ONE_SLOT = ["cluster.num_cpus=1"]
