# Included before enable_language(CUDA) (which otherwise picks the compiler's default): the
# GPU architectures the plugin is built for, unless -DCMAKE_CUDA_ARCHITECTURES=... or the
# CUDAARCHS environment variable says otherwise. CUDA 13 reaches sm_75 and newer only; real
# code for Turing (75), Ampere (80, 86), Ada (89), Hopper (90), and PTX for 90, which newer
# GPUs (Blackwell) JIT-compile at first use.
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES AND NOT DEFINED ENV{CUDAARCHS})
  set(CMAKE_CUDA_ARCHITECTURES "75-real;80-real;86-real;89-real;90")
endif()
