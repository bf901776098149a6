# Writes OUT: a C++ source defining `const char* const NAME` with the bytes
# of IN as a raw string literal (used to serve docs/openapi.json verbatim).
file(READ "${IN}" content)
string(FIND "${content}" ")MOATEMBED\"" clash)
if(NOT clash EQUAL -1)
  message(FATAL_ERROR "${IN} contains the raw-string delimiter")
endif()
file(WRITE "${OUT}" "// Generated from ${IN}; do not edit.\nnamespace ${NS} {\nextern const char* const ${NAME};\nconst char* const ${NAME} = R\"MOATEMBED(${content})MOATEMBED\";\n}\n")
