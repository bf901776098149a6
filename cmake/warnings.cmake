# Warnings are on for every Moat target and the tree builds clean with them.
set(MOAT_WARNINGS -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor
    -Wcast-align -Wunused -Woverloaded-virtual
    -Wimplicit-fallthrough -Wformat=2)
function(moat_target_warnings tgt)
  target_compile_options(${tgt} PRIVATE ${MOAT_WARNINGS})
endfunction()
