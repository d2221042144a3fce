# Cross build for 32-bit ARMv7 Linux (hard float) with Debian's cross compiler; tests run
# under qemu-user.
#   apt-get install g++-arm-linux-gnueabihf qemu-user
#   cmake -S . -B build-armhf -DCMAKE_TOOLCHAIN_FILE=cmake/toolchains/arm-linux-gnueabihf.cmake
#   cmake --build build-armhf -j2 && (cd build-armhf && ctest)
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR arm)
set(SPAD_CROSS_TRIPLE arm-linux-gnueabihf)
include(${CMAKE_CURRENT_LIST_DIR}/cross-common.cmake)
