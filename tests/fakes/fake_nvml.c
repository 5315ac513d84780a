/* A fake libnvidia-ml.so.1 for tests: the NVML symbols xpuctl's driver calls, with NVML's
 * signatures and units (power mW, energy mJ, memory bytes, clocks MHz), two H100-like devices.
 * Built by tests/agent/test_nvml.py with gcc. FAKE_NVML_DENY_SET=1 makes the setter answer
 * NVML_ERROR_NO_PERMISSION (4), as it does for a non-root caller. Written for xpuctl's tests. */
#include <stdlib.h>
#include <string.h>
#include <stdio.h>

typedef struct { int index; } dev_t_;
typedef dev_t_ *nvmlDevice_t;
typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct { unsigned int gpu, memory; } nvmlUtilization_t;
typedef struct {
    char busIdLegacy[16]; unsigned int domain, bus, device, pciDeviceId, pciSubSystemId; char busId[32];
} nvmlPciInfo_t;

static dev_t_ devices[2] = {{0}, {1}};
static unsigned int limit_mw[2] = {700000, 700000};
static int inited = 0;

int nvmlInitWithFlags(unsigned int flags) { (void)flags; inited = 1; return 0; }
int nvmlInit_v2(void) { inited = 1; return 0; }
int nvmlShutdown(void) { inited = 0; return 0; }
const char *nvmlErrorString(int rc) {
    switch (rc) { case 3: return "Not Supported"; case 4: return "Insufficient Permissions";
                  case 2: return "Invalid Argument"; default: return "Unknown Error"; }
}
int nvmlSystemGetDriverVersion(char *v, unsigned int n) { snprintf(v, n, "590.48.01"); return 0; }
int nvmlDeviceGetCount_v2(unsigned int *n) { if (!inited) return 1; *n = 2; return 0; }
int nvmlDeviceGetHandleByIndex_v2(unsigned int i, nvmlDevice_t *d) {
    if (i >= 2) return 2; *d = &devices[i]; return 0;
}
int nvmlDeviceGetName(nvmlDevice_t d, char *s, unsigned int n) { (void)d; snprintf(s, n, "NVIDIA H100 80GB HBM3"); return 0; }
int nvmlDeviceGetUUID(nvmlDevice_t d, char *s, unsigned int n) {
    snprintf(s, n, "GPU-fake0000-0000-0000-0000-00000000000%d", d->index); return 0;
}
int nvmlDeviceGetPciInfo_v3(nvmlDevice_t d, nvmlPciInfo_t *p) {
    memset(p, 0, sizeof *p); snprintf(p->busId, sizeof p->busId, "00000000:%02X:00.0", 0x18 + d->index); return 0;
}
int nvmlDeviceGetMemoryInfo(nvmlDevice_t d, nvmlMemory_t *m) {
    m->total = 85520809984ULL; m->used = 20780679168ULL + (unsigned long long)d->index; m->free = m->total - m->used; return 0;
}
int nvmlDeviceGetUtilizationRates(nvmlDevice_t d, nvmlUtilization_t *u) { u->gpu = 97 - d->index; u->memory = 40; return 0; }
int nvmlDeviceGetPowerUsage(nvmlDevice_t d, unsigned int *mw) {
    unsigned int want = 629000 - 1000 * (unsigned)d->index;
    *mw = want < limit_mw[d->index] ? want : limit_mw[d->index]; return 0;
}
int nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t d, unsigned long long *mj) { *mj = 123456789ULL + (unsigned)d->index; return 0; }
int nvmlDeviceGetEnforcedPowerLimit(nvmlDevice_t d, unsigned int *mw) { *mw = limit_mw[d->index]; return 0; }
int nvmlDeviceGetPowerManagementLimitConstraints(nvmlDevice_t d, unsigned int *lo, unsigned int *hi) {
    (void)d; *lo = 200000; *hi = 700000; return 0;
}
int nvmlDeviceGetPowerManagementDefaultLimit(nvmlDevice_t d, unsigned int *mw) { (void)d; *mw = 700000; return 0; }
int nvmlDeviceGetTemperature(nvmlDevice_t d, int sensor, unsigned int *c) { (void)sensor; *c = 59 + (unsigned)d->index; return 0; }
int nvmlDeviceGetTemperatureThreshold(nvmlDevice_t d, int type, unsigned int *c) {
    (void)d; if (type == 0) { *c = 92; return 0; } if (type == 1) { *c = 87; return 0; } return 3;
}
int nvmlDeviceGetClockInfo(nvmlDevice_t d, int type, unsigned int *mhz) { (void)d; *mhz = type == 1 ? 1980 : 2619; return 0; }
int nvmlDeviceGetTotalEccErrors(nvmlDevice_t d, int err, int counter, unsigned long long *n) {
    (void)counter; if (d->index == 1) return 3; /* device 1: ECC not supported */
    *n = err == 0 ? 12ULL : 0ULL; return 0;
}
#ifndef NO_SETTER /* -DNO_SETTER: a library that reads but does not export the setter (IXML variant) */
int nvmlDeviceSetPowerManagementLimit(nvmlDevice_t d, unsigned int mw) {
    const char *deny = getenv("FAKE_NVML_DENY_SET");
    if (deny && deny[0] == '1') return 4;
    if (mw < 200000 || mw > 700000) return 2;
    limit_mw[d->index] = mw; return 0;
}
#endif

/* XID events: FAKE_NVML_XID=<device>:<xid> makes one critical-XID event pending per init. */
typedef struct { nvmlDevice_t device; unsigned long long eventType, eventData; unsigned int gi, ci; } nvmlEventData_t;
static int event_set_token = 1;
static int xid_delivered = 0;
int nvmlEventSetCreate(void **set) { *set = &event_set_token; xid_delivered = 0; return 0; }
int nvmlDeviceRegisterEvents(nvmlDevice_t d, unsigned long long types, void *set) { (void)d; (void)types; (void)set; return 0; }
int nvmlEventSetFree(void *set) { (void)set; return 0; }
int nvmlEventSetWait_v2(void *set, nvmlEventData_t *data, unsigned int timeout_ms) {
    const char *spec = getenv("FAKE_NVML_XID");
    int dev = 0, xid = 0;
    (void)set; (void)timeout_ms;
    if (!spec || xid_delivered || sscanf(spec, "%d:%d", &dev, &xid) != 2 || dev < 0 || dev > 1) return 10; /* timeout */
    xid_delivered = 1;
    data->device = &devices[dev]; data->eventType = 8; data->eventData = (unsigned long long)xid; data->gi = data->ci = 0;
    return 0;
}
