/* The AVX2 build of the C construction kernels (see _construct_c.h). */
#define DCLSZOO_AVX2
#include "_construct_c.h"
