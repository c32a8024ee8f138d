/*
 * Links against an installed wanrt found through pkg-config (tests/ffi.rs builds it after
 * `cargo cinstall`): the header and the library agree on the ABI version and the status names.
 */
#include <stdio.h>
#include <string.h>

#include <wanrt.h>

int main(void) {
    if (wanrt_abi_version() != WANRT_ABI_VERSION) {
        printf("ABI %u, header %u\n", wanrt_abi_version(), (unsigned)WANRT_ABI_VERSION);
        return 1;
    }
    if (strcmp(wanrt_status_str(WANRT_STATUS_OUT_OF_MEMORY), "out of memory") != 0) return 1;
    printf("wanrt %s, ABI %u\n", wanrt_version(), wanrt_abi_version());
    return 0;
}
