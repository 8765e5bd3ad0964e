# Included into llama.cpp's own CMake project while llama-cpp-python builds it
# (CMAKE_PROJECT_llama.cpp_INCLUDE, passed by scripts/install-embedded.sh).
# llama-cpp-python forces LLAMA_BUILD_COMMON on, but nothing it loads at run time links
# libllama-common: skipping it (and mtmd, via -DLLAVA_BUILD=OFF) removes ~60% of the compile.
set(LLAMA_BUILD_COMMON OFF CACHE BOOL "llama.cpp: build common utils library" FORCE)
