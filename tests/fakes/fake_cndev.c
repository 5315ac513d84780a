/* A fake libcndev.so with the power-limit entry points agent/drivers/cndev.py binds, laid out as
 * the public cndev.h (Cambricon/mlu-exporter pkg/cndev/include/cndev.h) declares them as we read
 * it: int version first, limits in whole watts as 16-bit fields, devices by an int32 handle;
 * cndevGetDevicePowerInfo as gpustack-runtime 0.2.6's pycndev lays it out.
 * Two cards (0, 1), range 75..150 W, default 150 W (an MLU370-X4). Built by tests/agent/test_tools.py with gcc.
 * -DWIDE_RANGE builds a library whose range fields are 32-bit ints (a layout the driver must
 * detect and refuse); -DWIDE_LIMIT one whose limitation carries an int before the limit (the
 * same). FAKE_CNDEV_DENY_SET=1 makes a set fail as without root. */
#include <stdlib.h>
#include <string.h>

typedef int cndevDevice_t;
#ifdef WIDE_LIMIT
typedef struct { int version; int flags; unsigned short powerLimit; } cndevPowerManagementLimitation_t;
#else
typedef struct { int version; unsigned short powerLimit; } cndevPowerManagementLimitation_t;
#endif
typedef struct { int usage, cap, machine, tdp, maxPower; int reserved[16]; } cndevDevicePowerInfo_t;
#ifdef WIDE_RANGE
typedef struct { int version; int minPowerLimit; int maxPowerLimit; } cndevPowerManagementLimitationRange_t;
#else
typedef struct { int version; unsigned short minPowerLimit; unsigned short maxPowerLimit; } cndevPowerManagementLimitationRange_t;
#endif

enum { OK = 0, NOT_INITED = 2, INVALID_ARGUMENT = 3, NO_PERMISSION = 11, VERSION_MISMATCH = 17 };
static int inited = 0;
static unsigned short limit_w[2] = {150, 150};

const char *cndevGetErrorString(int code) {
    switch (code) {
    case NO_PERMISSION: return "No permission";
    case VERSION_MISMATCH: return "The version of the struct is not supported";
    case INVALID_ARGUMENT: return "Invalid argument";
    default: return "Unknown error";
    }
}
int cndevInit(int reserved) { (void)reserved; inited = 1; return OK; }
static int card(cndevDevice_t h) { return h == 0x1000 ? 0 : h == 0x1001 ? 1 : -1; }
int cndevGetDeviceHandleByIndex(int index, cndevDevice_t *handle) {
    if (!inited) return NOT_INITED;
    if (index < 0 || index > 1) return INVALID_ARGUMENT;
    *handle = 0x1000 + index; return OK;
}
int cndevGetPowerManagementLimitationRange(cndevPowerManagementLimitationRange_t *r, cndevDevice_t h) {
    if (r->version != 5) return VERSION_MISMATCH;
    if (card(h) < 0) return INVALID_ARGUMENT;
    r->minPowerLimit = 75; r->maxPowerLimit = 150; return OK;
}
int cndevGetPowerManagementDefaultLimitation(cndevPowerManagementLimitation_t *l, cndevDevice_t h) {
    if (l->version != 5) return VERSION_MISMATCH;
    if (card(h) < 0) return INVALID_ARGUMENT;
    l->powerLimit = 150; return OK;
}
int cndevGetPowerManagementLimitation(cndevPowerManagementLimitation_t *l, cndevDevice_t h) {
    if (l->version != 5) return VERSION_MISMATCH;
    if (card(h) < 0) return INVALID_ARGUMENT;
    l->powerLimit = limit_w[card(h)]; return OK;
}
int cndevSetPowerManagementLimitation(cndevPowerManagementLimitation_t *l, cndevDevice_t h) {
    const char *deny = getenv("FAKE_CNDEV_DENY_SET");
    if (deny && deny[0] == '1') return NO_PERMISSION;
    if (l->version != 5) return VERSION_MISMATCH;
    if (card(h) < 0 || l->powerLimit < 75 || l->powerLimit > 150) return INVALID_ARGUMENT;
    limit_w[card(h)] = l->powerLimit; return OK;
}
int cndevGetDevicePowerInfo(cndevDevicePowerInfo_t *info, cndevDevice_t h) {
    if (card(h) < 0) return INVALID_ARGUMENT;
    memset(info, 0, sizeof *info);
    info->usage = 30; info->cap = limit_w[card(h)]; info->machine = 0; info->tdp = 150; info->maxPower = 150;
    return OK;
}
