// libzstd (Debian: libzstd-dev). The static-linking-only section gives the advanced parameter API.
#define ZSTD_STATIC_LINKING_ONLY
#include <zstd.h>
#include <zstd_errors.h>
