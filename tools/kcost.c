/*
 * The kernel costs the device model needs, measured on this machine:
 *   minor_fault_ns  an anonymous read fault that maps the zero page (one pte)
 *   filemap_fault_around_ns  a read fault on a page already in the page cache
 *                   (MAP_SHARED mapping of a tmpfs file, one touch per 64 KiB
 *                   window, so each touch is one fault; fault-around maps up to
 *                   16 ptes in it, an upper bound on one-pte faults)
 *   copy_4k_ns      one 4 KiB copy between DRAM buffers larger than the caches
 *   unmap_ns        dropping one mapped page (madvise MADV_DONTNEED over a run)
 * Build and run: gcc -O2 -o /tmp/kcost tools/kcost.c && /tmp/kcost
 * Prints one line per figure, the median of 9 rounds.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL
#define NPAGES 16384UL /* 64 MiB */
#define ROUNDS 9
#define STRIDE 16UL

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v) {
    qsort(v, ROUNDS, sizeof v[0], cmp);
    return v[ROUNDS / 2];
}

int main(void) {
    char path[] = "/dev/shm/kcost-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0 || ftruncate(fd, NPAGES * PAGE) != 0) { perror("kcost: tmpfs file"); return 1; }
    unlink(path);
    /* Populate the page cache once, so later faults are minor. */
    char *w = mmap(NULL, NPAGES * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (w == MAP_FAILED) { perror("kcost: mmap"); return 1; }
    memset(w, 1, NPAGES * PAGE);
    munmap(w, NPAGES * PAGE);

    double fault[ROUNDS], unmap[ROUNDS], copy[ROUNDS];
    volatile unsigned long sink = 0;
    for (int r = 0; r < ROUNDS; r++) {
        char *m = mmap(NULL, NPAGES * PAGE, PROT_READ, MAP_SHARED, fd, 0);
        if (m == MAP_FAILED) { perror("kcost: mmap"); return 1; }
        /* One touch per 64 KiB: fault-around maps at most 16 pages of an
         * aligned window, so every touch is one fault that maps its pages. */
        double t0 = now_ns();
        for (unsigned long i = 0; i < NPAGES; i += STRIDE) sink += (unsigned char)m[i * PAGE];
        double t1 = now_ns();
        for (unsigned long i = 0; i < NPAGES; i++) sink += (unsigned char)m[i * PAGE];
        double t2 = now_ns();
        madvise(m, NPAGES * PAGE, MADV_DONTNEED);
        double t3 = now_ns();
        fault[r] = (t1 - t0) / (NPAGES / STRIDE);
        unmap[r] = (t3 - t2) / NPAGES;
        (void)t2;
        munmap(m, NPAGES * PAGE);
    }
    char *a = aligned_alloc(PAGE, NPAGES * PAGE), *b = aligned_alloc(PAGE, NPAGES * PAGE);
    if (!a || !b) { perror("kcost: alloc"); return 1; }
    memset(a, 2, NPAGES * PAGE);
    memset(b, 3, NPAGES * PAGE);
    for (int r = 0; r < ROUNDS; r++) {
        double t0 = now_ns();
        for (unsigned long i = 0; i < NPAGES; i++) memcpy(b + i * PAGE, a + ((i * 7919) % NPAGES) * PAGE, PAGE);
        double t1 = now_ns();
        copy[r] = (t1 - t0) / NPAGES;
        sink += (unsigned char)b[r * PAGE];
    }
    /* An anonymous read fault maps the shared zero page: one pte per fault,
     * no fault-around, no allocation: the bare cost of a minor fault. */
    double zfault[ROUNDS];
    for (int r = 0; r < ROUNDS; r++) {
        char *z = mmap(NULL, NPAGES * PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (z == MAP_FAILED) { perror("kcost: mmap"); return 1; }
        double t0 = now_ns();
        for (unsigned long i = 0; i < NPAGES; i++) sink += (unsigned char)z[i * PAGE];
        double t1 = now_ns();
        zfault[r] = (t1 - t0) / NPAGES;
        munmap(z, NPAGES * PAGE);
    }
    printf("minor_fault_ns %.0f\n", median(zfault));
    printf("filemap_fault_around_ns %.0f\n", median(fault));
    printf("unmap_ns %.0f\n", median(unmap));
    printf("copy_4k_ns %.0f\n", median(copy));
    return sink == 42 ? 2 : 0;
}
