# SPDX-FileCopyrightText: 2026 The attn authors
# SPDX-License-Identifier: MIT
#
# Cross-compiles for 64-bit ARM Linux (NEON) with Debian's g++-aarch64-linux-gnu and runs the
# results under qemu-user (qemu-aarch64, with the cross toolchain's libraries as its sysroot).
# Used by the aarch64 preset and by .ci/run's portability stage; needs the packages
# g++-aarch64-linux-gnu, qemu-user and googletest (GoogleTest's sources, built for the target).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64 -L /usr/aarch64-linux-gnu)

# Headers and CMake packages of the build machine (Eigen is header-only); libraries and programs
# of the target only.
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)
