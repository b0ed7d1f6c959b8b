/* The AVX-512 build of the C construction kernels (see _construct_c.h). */
#define DCLSZOO_AVX512
#include "_construct_c.h"
