/*
 * Includes CBN_TEMPLATE (a loops header written for one element type) once
 * for float and once for double, with CBN_IMPL_F32 set accordingly.
 */
#define CBN_IMPL_F32 1
#include CBN_TEMPLATE
#undef CBN_IMPL_F32
#define CBN_IMPL_F32 0
#include CBN_TEMPLATE
#undef CBN_IMPL_F32
