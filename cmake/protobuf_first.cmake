# ttt_link_protobuf_first(<target>): libprotobuf first on <target>'s link line, kept even where
# nothing before it needs it (--no-as-needed). Call it right after add_executable, before the
# target's other target_link_libraries, so that it comes first.
# Why: Debian's libsentencepiece carries its own protobuf-lite 3.14; a process that met it before
# libprotobuf 3.21 crashed in protobuf's static initialisation. The tokenizer now reads
# SentencePiece models natively, so no shipped binary links libsentencepiece any more: this is
# belt and braces for the binaries that load both the server's protos and a tokenizer, kept in
# this one place.
function(ttt_link_protobuf_first target)
  target_link_libraries(${target} PRIVATE -Wl,--no-as-needed protobuf::libprotobuf -Wl,--as-needed)
endfunction()
