"""Test-session set-up shared by tests/ and the notebooks that nbval runs."""

import os

# On small VMs GNU OpenMP's spinning threads make every element-wise op of
# torch's CPU build 10-40x slower with 2 threads; a passive wait fixes it. It
# must be set before torch is imported, and notebook kernels inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
