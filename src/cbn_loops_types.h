/*
 * Includes CBN_TEMPLATE (a loops header written for one data type) once per
 * data type, with CBN_IMPL_KIND set to CBN_F32, CBN_F64, CBN_F16, CBN_BF16.
 */
#define CBN_IMPL_KIND CBN_F32
#include CBN_TEMPLATE
#undef CBN_IMPL_KIND
#define CBN_IMPL_KIND CBN_F64
#include CBN_TEMPLATE
#undef CBN_IMPL_KIND
#define CBN_IMPL_KIND CBN_F16
#include CBN_TEMPLATE
#undef CBN_IMPL_KIND
#define CBN_IMPL_KIND CBN_BF16
#include CBN_TEMPLATE
#undef CBN_IMPL_KIND
