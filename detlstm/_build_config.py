"""Build settings in one place: the version, and the compiler flags of the kernels, read by setup.py
(without importing the package) and by the tests that compile the kernel sources themselves."""

VERSION = "0.1.0"

# ARITHMETIC.md rule 2: no contraction of a*b+c into fma behind our back, no fast math.
ARITHMETIC_CXX_FLAGS = ["-ffp-contract=off", "-fno-fast-math"]
CXX_FLAGS = ["-O3"] + ARITHMETIC_CXX_FLAGS
NVCC_FLAGS = [
    "-O3",
    "--fmad=false",
    "-prec-div=true",
    "-prec-sqrt=true",
    "-ftz=false",
    "-Xcompiler=-ffp-contract=off",
]
# csrc/cuda compiled as plain C++ against tests/cuda_emulation/include (the host emulation of CUDA)
EMULATION_CXX_FLAGS = ["-DDETLSTM_CUDA_EMULATION"] + ARITHMETIC_CXX_FLAGS
