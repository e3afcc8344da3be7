package bpf

//go:generate go tool bpf2go -tags linux -cc clang -cflags "-O2 -g -Wall -Werror -mcpu=v3" -target bpfel -output-stem capture -type zt_owner_key -type zt_owner -type zt_listener Capture capture.c -- -I.
