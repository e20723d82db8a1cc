/*
 * fakenvml.c - a fake libnvidia-ml.so.1 for flex's tests: the real pynvml loads it through
 * LD_LIBRARY_PATH and sees the GPUs described by the file named in $FAKE_NVML_CONFIG.
 *
 * Config format: one `key=value` per line; blank lines and lines starting with '#' are ignored;
 * spaces around key and value are trimmed. Keys:
 *
 *   mode=ok                    default; any error name instead (e.g. driver_not_loaded) makes nvmlInit*
 *                              return that error, and every later call too (the driver went away)
 *   driver=550.54.15           nvmlSystemGetDriverVersion
 *   nvml_version=12.550.54.15  nvmlSystemGetNVMLVersion
 *   gpu.count=2                number of GPUs (at most 16); each starts with a default name, uuid, zeros
 *   gpuN.name=NVIDIA H100 80GB HBM3
 *   gpuN.uuid=GPU-...
 *   gpuN.lost=1                nvmlDeviceGetHandleByIndex and every call on the GPU: NVML_ERROR_GPU_IS_LOST
 *   gpuN.util=97               utilization.gpu, percent     } one call: either unsupported fails it
 *   gpuN.mem_util=41           utilization.memory, percent  }
 *   gpuN.mem_total=85520809984 bytes  } one call (MemoryInfo v1/v2): free = total - reserved - used;
 *   gpuN.mem_used=1073741824   bytes  } v1 counts reserved as used, as real NVML does
 *   gpuN.mem_reserved=0        bytes  }
 *   gpuN.temp=64               degrees C (nvmlDeviceGetTemperature and nvmlDeviceGetTemperatureV)
 *   gpuN.power=350000          milliwatts (nvmlDeviceGetPowerUsage)
 *   gpuN.power_limit=700000    milliwatts (nvmlDeviceGetEnforcedPowerLimit, ...PowerManagementLimit)
 *   gpuN.ecc_uncorrected=0     nvmlDeviceGetTotalEccErrors, uncorrected (volatile and aggregate alike)
 *   gpuN.ecc_corrected=0       nvmlDeviceGetTotalEccErrors, corrected
 *   gpuN.proc=4242:1073741824  a compute process, pid:used_bytes (used_bytes `NA`: not available);
 *                              repeat the key for more (at most 64 per GPU)
 *   gpuN.proc=NOT_SUPPORTED    the process list call fails with that error
 *
 * Any metric value may be an error name instead of a number (NOT_SUPPORTED, NO_PERMISSION,
 * GPU_IS_LOST, UNKNOWN, ... case-insensitive, see ERRORS below): the call that reads it returns it.
 *
 * The file is parsed at nvmlInit* and parsed again by any call when its inode, size or mtime changed,
 * so a test that replaces the file (write + rename) changes the GPUs under a running probe.
 * Struct layouts and versions follow nvml.h as used by nvidia-ml-py 13.x. Not thread-safe: pynvml
 * callers here are single-threaded. Calls this file does not define raise NVMLError_FunctionNotFound.
 */
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

enum {
    SUCCESS = 0, UNINITIALIZED = 1, INVALID_ARGUMENT = 2, NOT_SUPPORTED = 3, INSUFFICIENT_SIZE = 7,
    GPU_IS_LOST = 15, ARGUMENT_VERSION_MISMATCH = 25, UNKNOWN = 999,
};

static const struct { int code; const char *name, *text; } ERRORS[] = {
    {0, "SUCCESS", "Success"},
    {1, "UNINITIALIZED", "Uninitialized"},
    {2, "INVALID_ARGUMENT", "Invalid Argument"},
    {3, "NOT_SUPPORTED", "Not Supported"},
    {4, "NO_PERMISSION", "Insufficient Permissions"},
    {5, "ALREADY_INITIALIZED", "Already Initialized"},
    {6, "NOT_FOUND", "Not Found"},
    {7, "INSUFFICIENT_SIZE", "Insufficient Size"},
    {8, "INSUFFICIENT_POWER", "Insufficient External Power"},
    {9, "DRIVER_NOT_LOADED", "Driver Not Loaded"},
    {10, "TIMEOUT", "Timeout"},
    {11, "IRQ_ISSUE", "Interrupt Request Issue"},
    {12, "LIBRARY_NOT_FOUND", "NVML Shared Library Not Found"},
    {13, "FUNCTION_NOT_FOUND", "Function Not Found"},
    {14, "CORRUPTED_INFOROM", "Corrupted infoROM"},
    {15, "GPU_IS_LOST", "GPU is lost"},
    {16, "RESET_REQUIRED", "GPU requires restart"},
    {17, "OPERATING_SYSTEM", "The operating system has blocked the request."},
    {18, "LIB_RM_VERSION_MISMATCH", "RM has detected an NVML/RM version mismatch."},
    {20, "MEMORY", "Insufficient Memory"},
    {21, "NO_DATA", "No data"},
    {25, "ARGUMENT_VERSION_MISMATCH", "Argument version mismatch"},
    {999, "UNKNOWN", "Unknown Error"},
};
#define NERRORS (sizeof ERRORS / sizeof ERRORS[0])

/* nvml.h structs, laid out as pynvml's ctypes mirrors them. */
typedef struct { unsigned int gpu, memory; } nvmlUtilization_t;
typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct { unsigned int version; unsigned long long total, reserved, free, used; } nvmlMemory_v2_t;
typedef struct { unsigned int version, sensorType; int temperature; } nvmlTemperature_t;
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId, computeInstanceId;
} nvmlProcessInfo_t;

/* NVML_STRUCT_VERSION: the struct's size in the low 24 bits, its version above. */
#define STRUCT_VERSION(type, ver) ((unsigned int)(sizeof(type) | ((ver) << 24)))
#define MEMORY_V2 STRUCT_VERSION(nvmlMemory_v2_t, 2) /* 0x02000028, pynvml.nvmlMemory_v2 */
#define TEMPERATURE_V1 STRUCT_VERSION(nvmlTemperature_t, 1) /* 0x0100000C, pynvml.nvmlTemperature_v1 */

#define MAX_GPUS 16
#define MAX_PROCS 64

typedef struct { int err; unsigned long long v; } metric; /* err != 0: reading it returns err */

typedef struct fake_gpu {
    char name[96], uuid[96];
    int lost;
    metric util, mem_util, mem_total, mem_used, mem_reserved, temp, power, power_limit;
    metric ecc_uncorrected, ecc_corrected;
    int procs_err;
    unsigned int nprocs;
    nvmlProcessInfo_t procs[MAX_PROCS];
} fake_gpu;

typedef fake_gpu *nvmlDevice_t;

static struct {
    int init_err;
    char driver[80], nvml_version[80];
    unsigned int count;
    fake_gpu gpu[MAX_GPUS];
} cfg;

static struct stat parsed;   /* identity of the config file last parsed */
static int have_config;      /* a config file was parsed at least once */
static unsigned int refcount;  /* nvmlInit* calls not yet matched by nvmlShutdown */

static void warn(const char *what, const char *detail)
{
    fprintf(stderr, "fakenvml: %s: %s\n", what, detail);
}

static int error_named(const char *name)
{
    for (size_t i = 0; i < NERRORS; i++)
        if (strcasecmp(ERRORS[i].name, name) == 0)
            return ERRORS[i].code;
    warn("unknown error name, using UNKNOWN", name);
    return UNKNOWN;
}

static metric parse_metric(const char *value)
{
    metric m = {0, 0};
    if (*value >= '0' && *value <= '9')
        m.v = strtoull(value, NULL, 10);
    else
        m.err = error_named(value);
    return m;
}

static void reset_config(void)
{
    memset(&cfg, 0, sizeof cfg);
    strcpy(cfg.driver, "550.54.15");
    strcpy(cfg.nvml_version, "12.550.54.15");
}

static void set_count(unsigned int count)
{
    cfg.count = count > MAX_GPUS ? MAX_GPUS : count;
    for (unsigned int i = 0; i < cfg.count; i++) {
        snprintf(cfg.gpu[i].name, sizeof cfg.gpu[i].name, "NVIDIA Fake GPU");
        snprintf(cfg.gpu[i].uuid, sizeof cfg.gpu[i].uuid, "GPU-fa4e0000-0000-0000-0000-%012u", i);
    }
}

static void add_process(fake_gpu *g, const char *value)
{
    const char *colon = strchr(value, ':');
    if (!colon) {
        g->procs_err = error_named(value);
        return;
    }
    if (g->nprocs == MAX_PROCS)
        return;
    nvmlProcessInfo_t *p = &g->procs[g->nprocs++];
    p->pid = (unsigned int)strtoul(value, NULL, 10);
    p->usedGpuMemory = strcasecmp(colon + 1, "NA") == 0 ? ULLONG_MAX : strtoull(colon + 1, NULL, 10);
    p->gpuInstanceId = p->computeInstanceId = UINT_MAX; /* not a MIG instance */
}

static void set_gpu_key(fake_gpu *g, const char *key, const char *value)
{
    static const struct { const char *key; size_t offset; } METRICS[] = {
        {"util", offsetof(fake_gpu, util)}, {"mem_util", offsetof(fake_gpu, mem_util)},
        {"mem_total", offsetof(fake_gpu, mem_total)}, {"mem_used", offsetof(fake_gpu, mem_used)},
        {"mem_reserved", offsetof(fake_gpu, mem_reserved)}, {"temp", offsetof(fake_gpu, temp)},
        {"power", offsetof(fake_gpu, power)}, {"power_limit", offsetof(fake_gpu, power_limit)},
        {"ecc_uncorrected", offsetof(fake_gpu, ecc_uncorrected)},
        {"ecc_corrected", offsetof(fake_gpu, ecc_corrected)},
    };
    for (size_t i = 0; i < sizeof METRICS / sizeof METRICS[0]; i++) {
        if (strcmp(key, METRICS[i].key) == 0) {
            *(metric *)((char *)g + METRICS[i].offset) = parse_metric(value);
            return;
        }
    }
    if (strcmp(key, "name") == 0)
        snprintf(g->name, sizeof g->name, "%s", value);
    else if (strcmp(key, "uuid") == 0)
        snprintf(g->uuid, sizeof g->uuid, "%s", value);
    else if (strcmp(key, "lost") == 0)
        g->lost = atoi(value) != 0;
    else if (strcmp(key, "proc") == 0)
        add_process(g, value);
    else
        warn("unknown key", key);
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n > 0 && strchr(" \t\r\n", s[n - 1]))
        s[--n] = '\0';
    return s;
}

/* The GPU a `gpuN.field` key names (N < gpu.count), with *field set; NULL for any other key. */
static fake_gpu *gpu_of_key(const char *key, const char **field)
{
    char *end;
    unsigned long index;
    if (strncmp(key, "gpu", 3) != 0 || !(key[3] >= '0' && key[3] <= '9'))
        return NULL;
    index = strtoul(key + 3, &end, 10);
    if (*end != '.' || index >= cfg.count)
        return NULL;
    *field = end + 1;
    return &cfg.gpu[index];
}

static void set_key(const char *key, const char *value)
{
    const char *field = NULL;
    fake_gpu *g;
    if (strcmp(key, "mode") == 0)
        cfg.init_err = strcasecmp(value, "ok") == 0 ? SUCCESS : error_named(value);
    else if (strcmp(key, "driver") == 0)
        snprintf(cfg.driver, sizeof cfg.driver, "%s", value);
    else if (strcmp(key, "nvml_version") == 0)
        snprintf(cfg.nvml_version, sizeof cfg.nvml_version, "%s", value);
    else if (strcmp(key, "gpu.count") == 0)
        set_count((unsigned int)strtoul(value, NULL, 10));
    else if ((g = gpu_of_key(key, &field)) != NULL)
        set_gpu_key(g, field, value);
    else
        warn("unknown key or GPU index beyond gpu.count", key);
}

static int parse(const char *path)
{
    FILE *f = fopen(path, "r");
    char line[512];
    if (!f) {
        warn("cannot open FAKE_NVML_CONFIG", path);
        return -1;
    }
    reset_config();
    while (fgets(line, sizeof line, f)) {
        char *s = trim(line), *eq = strchr(s, '=');
        if (*s == '\0' || *s == '#')
            continue;
        if (!eq) {
            warn("line without '='", s);
            continue;
        }
        *eq = '\0';
        set_key(trim(s), trim(eq + 1));
    }
    fclose(f);
    return 0;
}

/* Parse the config again when the file changed (a different inode, size or mtime). */
static void refresh(void)
{
    const char *path = getenv("FAKE_NVML_CONFIG");
    struct stat st;
    if (!path || stat(path, &st) != 0)
        return; /* keep what was parsed last */
    if (have_config && st.st_ino == parsed.st_ino && st.st_dev == parsed.st_dev
        && st.st_size == parsed.st_size && st.st_mtim.tv_sec == parsed.st_mtim.tv_sec
        && st.st_mtim.tv_nsec == parsed.st_mtim.tv_nsec)
        return;
    if (parse(path) == 0) {
        parsed = st;
        have_config = 1;
    }
}

/* The state every call but nvmlInit* needs: initialised, driver (still) there. */
static int ready(void)
{
    refresh();
    if (refcount == 0)
        return UNINITIALIZED;
    return cfg.init_err;
}

static int device(nvmlDevice_t h, fake_gpu **g)
{
    int r = ready();
    uintptr_t first = (uintptr_t)&cfg.gpu[0], p = (uintptr_t)h;
    if (r != SUCCESS)
        return r;
    if (p < first || p >= (uintptr_t)&cfg.gpu[cfg.count] || (p - first) % sizeof(fake_gpu) != 0)
        return INVALID_ARGUMENT;
    if (h->lost)
        return GPU_IS_LOST;
    *g = h;
    return SUCCESS;
}

#define DEVICE(h, g, out)                                                                    \
    fake_gpu *g = NULL;                                                                      \
    do {                                                                                     \
        int r_ = device(h, &g);                                                              \
        if (r_ != SUCCESS)                                                                   \
            return r_;                                                                       \
        if (!(out))                                                                          \
            return INVALID_ARGUMENT;                                                         \
    } while (0)

static int copy_string(char *buf, unsigned int len, const char *s)
{
    if (!buf)
        return INVALID_ARGUMENT;
    if (strlen(s) + 1 > len)
        return INSUFFICIENT_SIZE;
    memcpy(buf, s, strlen(s) + 1);
    return SUCCESS;
}

static int read_metric(const metric *m, unsigned long long *v)
{
    if (m->err != SUCCESS)
        return m->err;
    *v = m->v;
    return SUCCESS;
}

static int read_uint(const metric *m, unsigned int *out)
{
    unsigned long long v = 0;
    int r = read_metric(m, &v);
    if (r == SUCCESS)
        *out = (unsigned int)v;
    return r;
}

/* ---- the NVML API ---- */

const char *nvmlErrorString(int result)
{
    for (size_t i = 0; i < NERRORS; i++)
        if (ERRORS[i].code == result)
            return ERRORS[i].text;
    return "Unknown Error";
}

int nvmlInitWithFlags(unsigned int flags)
{
    (void)flags;
    refresh();
    if (!have_config) {
        warn("no config", "set FAKE_NVML_CONFIG to a readable file");
        return UNKNOWN;
    }
    if (cfg.init_err != SUCCESS)
        return cfg.init_err;
    refcount++;
    return SUCCESS;
}

int nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
int nvmlInit(void) { return nvmlInitWithFlags(0); }

int nvmlShutdown(void)
{
    if (refcount == 0)
        return UNINITIALIZED;
    refcount--;
    return SUCCESS;
}

int nvmlSystemGetDriverVersion(char *version, unsigned int length)
{
    int r = ready();
    return r != SUCCESS ? r : copy_string(version, length, cfg.driver);
}

int nvmlSystemGetNVMLVersion(char *version, unsigned int length)
{
    int r = ready();
    return r != SUCCESS ? r : copy_string(version, length, cfg.nvml_version);
}

int nvmlDeviceGetCount_v2(unsigned int *count)
{
    int r = ready();
    if (r != SUCCESS)
        return r;
    if (!count)
        return INVALID_ARGUMENT;
    *count = cfg.count;
    return SUCCESS;
}

int nvmlDeviceGetCount(unsigned int *count) { return nvmlDeviceGetCount_v2(count); }

int nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device)
{
    int r = ready();
    if (r != SUCCESS)
        return r;
    if (!device || index >= cfg.count)
        return INVALID_ARGUMENT;
    if (cfg.gpu[index].lost)
        return GPU_IS_LOST;
    *device = &cfg.gpu[index];
    return SUCCESS;
}

int nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device)
{
    return nvmlDeviceGetHandleByIndex_v2(index, device);
}

int nvmlDeviceGetIndex(nvmlDevice_t h, unsigned int *index)
{
    DEVICE(h, g, index);
    *index = (unsigned int)(g - cfg.gpu);
    return SUCCESS;
}

int nvmlDeviceGetName(nvmlDevice_t h, char *name, unsigned int length)
{
    DEVICE(h, g, name);
    return copy_string(name, length, g->name);
}

int nvmlDeviceGetUUID(nvmlDevice_t h, char *uuid, unsigned int length)
{
    DEVICE(h, g, uuid);
    return copy_string(uuid, length, g->uuid);
}

int nvmlDeviceGetUtilizationRates(nvmlDevice_t h, nvmlUtilization_t *util)
{
    nvmlUtilization_t u = {0, 0};
    int r;
    DEVICE(h, g, util);
    if ((r = read_uint(&g->util, &u.gpu)) != SUCCESS || (r = read_uint(&g->mem_util, &u.memory)) != SUCCESS)
        return r;
    *util = u;
    return SUCCESS;
}

/* total, reserved and used of a GPU, or the error of the first unsupported one. */
static int memory(const fake_gpu *g, unsigned long long *total, unsigned long long *reserved,
                  unsigned long long *used)
{
    int r;
    if ((r = read_metric(&g->mem_total, total)) != SUCCESS
        || (r = read_metric(&g->mem_reserved, reserved)) != SUCCESS
        || (r = read_metric(&g->mem_used, used)) != SUCCESS)
        return r;
    return SUCCESS;
}

static unsigned long long minus(unsigned long long a, unsigned long long b) { return a > b ? a - b : 0; }

int nvmlDeviceGetMemoryInfo(nvmlDevice_t h, nvmlMemory_t *mem)
{
    unsigned long long total = 0, reserved = 0, used = 0;
    int r;
    DEVICE(h, g, mem);
    if ((r = memory(g, &total, &reserved, &used)) != SUCCESS)
        return r;
    mem->total = total;
    mem->used = used + reserved;
    mem->free = minus(total, used + reserved);
    return SUCCESS;
}

int nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t h, nvmlMemory_v2_t *mem)
{
    unsigned long long total = 0, reserved = 0, used = 0;
    int r;
    DEVICE(h, g, mem);
    if (mem->version != MEMORY_V2)
        return ARGUMENT_VERSION_MISMATCH;
    if ((r = memory(g, &total, &reserved, &used)) != SUCCESS)
        return r;
    mem->total = total;
    mem->reserved = reserved;
    mem->used = used;
    mem->free = minus(total, used + reserved);
    return SUCCESS;
}

int nvmlDeviceGetTemperature(nvmlDevice_t h, unsigned int sensor, unsigned int *temp)
{
    DEVICE(h, g, temp);
    if (sensor != 0) /* NVML_TEMPERATURE_GPU is the only sensor */
        return INVALID_ARGUMENT;
    return read_uint(&g->temp, temp);
}

int nvmlDeviceGetTemperatureV(nvmlDevice_t h, nvmlTemperature_t *temp)
{
    unsigned int t = 0;
    int r;
    DEVICE(h, g, temp);
    if (temp->version != TEMPERATURE_V1)
        return ARGUMENT_VERSION_MISMATCH;
    if (temp->sensorType != 0)
        return INVALID_ARGUMENT;
    if ((r = read_uint(&g->temp, &t)) == SUCCESS)
        temp->temperature = (int)t;
    return r;
}

int nvmlDeviceGetPowerUsage(nvmlDevice_t h, unsigned int *milliwatts)
{
    DEVICE(h, g, milliwatts);
    return read_uint(&g->power, milliwatts);
}

int nvmlDeviceGetEnforcedPowerLimit(nvmlDevice_t h, unsigned int *milliwatts)
{
    DEVICE(h, g, milliwatts);
    return read_uint(&g->power_limit, milliwatts);
}

int nvmlDeviceGetPowerManagementLimit(nvmlDevice_t h, unsigned int *milliwatts)
{
    return nvmlDeviceGetEnforcedPowerLimit(h, milliwatts);
}

int nvmlDeviceGetTotalEccErrors(nvmlDevice_t h, unsigned int errorType, unsigned int counterType,
                                unsigned long long *count)
{
    DEVICE(h, g, count);
    if (errorType > 1 || counterType > 1) /* corrected/uncorrected, volatile/aggregate */
        return INVALID_ARGUMENT;
    return read_metric(errorType == 1 ? &g->ecc_uncorrected : &g->ecc_corrected, count);
}

/* Two calls: with *count too small (0 and NULL first), INSUFFICIENT_SIZE and the count needed. */
int nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t h, unsigned int *count, nvmlProcessInfo_t *infos)
{
    DEVICE(h, g, count);
    if (g->procs_err != SUCCESS)
        return g->procs_err;
    if (*count < g->nprocs) {
        *count = g->nprocs;
        return INSUFFICIENT_SIZE;
    }
    if (g->nprocs > 0 && !infos)
        return INVALID_ARGUMENT;
    if (g->nprocs > 0)
        memcpy(infos, g->procs, g->nprocs * sizeof *infos);
    *count = g->nprocs;
    return SUCCESS;
}
