// OpenBLAS's CBLAS interface (Debian: libopenblas-dev; there is no cblas.pc, pkg-config module "openblas").
#include <cblas.h>
