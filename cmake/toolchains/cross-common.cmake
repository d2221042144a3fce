# Shared by the per-target toolchain files, which set SPAD_CROSS_TRIPLE first.
set(CMAKE_C_COMPILER ${SPAD_CROSS_TRIPLE}-gcc)
set(CMAKE_CXX_COMPILER ${SPAD_CROSS_TRIPLE}-g++)
set(CMAKE_STRIP ${SPAD_CROSS_TRIPLE}-strip CACHE FILEPATH "strip for the target")

# Debian installs the target's libraries under /usr/<triple>; look there only.
set(CMAKE_FIND_ROOT_PATH /usr/${SPAD_CROSS_TRIPLE})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)

# ctest (and add_test commands) run target binaries through user-mode emulation; -L
# points qemu at the target's dynamic loader and libc.
string(REGEX REPLACE "-.*" "" _spad_qemu_arch "${SPAD_CROSS_TRIPLE}")
find_program(SPAD_QEMU NAMES qemu-${_spad_qemu_arch} qemu-${_spad_qemu_arch}-static)
if(SPAD_QEMU)
    set(CMAKE_CROSSCOMPILING_EMULATOR ${SPAD_QEMU} -L /usr/${SPAD_CROSS_TRIPLE})
endif()

# Devices care about size: one section per function and object, so that the linker drops
# whatever a program does not call (the core is a static library of many small ops).
set(CMAKE_C_FLAGS_INIT "-ffunction-sections -fdata-sections")
set(CMAKE_CXX_FLAGS_INIT "-ffunction-sections -fdata-sections -Wno-psabi")  # psabi: a GCC 7.1 ABI note on arm
set(CMAKE_EXE_LINKER_FLAGS_INIT "-Wl,--gc-sections")
