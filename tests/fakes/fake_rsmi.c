/* A fake librocm_smi64.so for tests: the ROCm SMI power-cap symbols xpuctl calls (caps in µW),
 * one device with a 100-300 W range. FAKE_RSMI_DENY_SET=1 answers RSMI_STATUS_PERMISSION (4).
 * Written for xpuctl's tests (AMD's and Hygon's librocm_smi64 share these signatures). */
#include <stdint.h>
#include <stdlib.h>

static uint64_t cap_uw = 300000000ULL;
static int inited = 0;

int rsmi_init(uint64_t flags) { (void)flags; inited = 1; return 0; }
int rsmi_shut_down(void) { inited = 0; return 0; }
int rsmi_num_monitor_devices(uint32_t *n) { *n = 1; return 0; }
int rsmi_dev_power_cap_range_get(uint32_t dv, uint32_t sensor, uint64_t *max, uint64_t *min) {
    (void)sensor; if (dv != 0) return 1; *max = 300000000ULL; *min = 100000000ULL; return 0;
}
int rsmi_dev_power_cap_get(uint32_t dv, uint32_t sensor, uint64_t *cap) { (void)sensor; if (dv != 0) return 1; *cap = cap_uw; return 0; }
int rsmi_dev_power_cap_default_get(uint32_t dv, uint64_t *cap) { if (dv != 0) return 1; *cap = 300000000ULL; return 0; }
int rsmi_dev_power_cap_set(uint32_t dv, uint32_t sensor, uint64_t cap) {
    const char *deny = getenv("FAKE_RSMI_DENY_SET");
    (void)sensor;
    if (!inited) return 8;
    if (deny && deny[0] == '1') return 4;
    if (dv != 0 || cap < 100000000ULL || cap > 300000000ULL) return 1;
    cap_uw = cap; return 0;
}
