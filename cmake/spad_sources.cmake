# The core's source list, shared by CMakeLists.txt and checked against setup.py.
#
# Why a glob and not a checked-in list (csrc/sources.txt): several people add op files
# at once, and a glob picks a new csrc/core/**/*.cpp up in both builds with no shared
# list to edit or to conflict on. setup.py globs the same pattern
# (sorted(glob("csrc/core/**/*.cpp", recursive=True))); tests/test_build.py runs this
# file in script mode and asserts that both globs give the same set, so they cannot drift.
#
#   cmake -DSPAD_ROOT=<repo> -P cmake/spad_sources.cmake   # prints one path per line
if(NOT DEFINED SPAD_ROOT)
    get_filename_component(SPAD_ROOT "${CMAKE_CURRENT_LIST_DIR}/.." ABSOLUTE)
endif()

if(CMAKE_SCRIPT_MODE_FILE)
    # CONFIGURE_DEPENDS means nothing (and is rejected) outside a project.
    file(GLOB_RECURSE SPAD_CORE_SOURCES RELATIVE "${SPAD_ROOT}" "${SPAD_ROOT}/csrc/core/*.cpp")
else()
    # CONFIGURE_DEPENDS: a new file re-runs the glob at build time, no manual re-configure.
    file(GLOB_RECURSE SPAD_CORE_SOURCES CONFIGURE_DEPENDS RELATIVE "${SPAD_ROOT}" "${SPAD_ROOT}/csrc/core/*.cpp")
endif()
list(SORT SPAD_CORE_SOURCES)

if(CMAKE_SCRIPT_MODE_FILE)
    foreach(src IN LISTS SPAD_CORE_SOURCES)
        message(NOTICE "${src}")
    endforeach()
endif()
