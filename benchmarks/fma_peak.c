/* The float32 fused multiply-add peak of this CPU, the limit no kernel can pass.
 *
 * Each thread keeps 12 independent accumulator vectors in registers and updates each with one
 * FMA per step (acc = acc * a + b), enough independent chains to cover the FMA latency on
 * current x86 cores, so the loop runs at the FMA units' throughput. 2 flops per lane per FMA.
 * Built by benchmarks/harness.py with: cc -O2 -march=native -pthread fma_peak.c
 * Usage: fma_peak THREADS  ->  one line of JSON.
 */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#if defined(__AVX512F__)
typedef __m512 vec;
#define LANES 16
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define ADD _mm512_add_ps
#define STORE _mm512_storeu_ps
#elif defined(__FMA__)
typedef __m256 vec;
#define LANES 8
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define ADD _mm256_add_ps
#define STORE _mm256_storeu_ps
#else
#error "needs FMA (x86-64 with AVX2+FMA or AVX-512)"
#endif

#define CHAINS 12
#define STEPS 40000000L

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static void *chains(void *result) {
    vec acc[CHAINS];
    for (int i = 0; i < CHAINS; i++) acc[i] = SET1(1.0f + i);
    const vec a = SET1(0.99999994f), b = SET1(1e-8f);
    double start = seconds();
    for (long s = 0; s < STEPS; s++) {
#pragma GCC unroll 12
        for (int i = 0; i < CHAINS; i++) acc[i] = FMA(acc[i], a, b);
    }
    double elapsed = seconds() - start;
    vec sum = acc[0];
    for (int i = 1; i < CHAINS; i++) sum = ADD(sum, acc[i]);
    float lanes[LANES];
    STORE(lanes, sum); /* use the result, so the loop is not optimised away */
    ((double *)result)[0] = 2.0 * LANES * CHAINS * STEPS / elapsed / 1e9;
    ((double *)result)[1] = lanes[0];
    return NULL;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    if (threads < 1 || threads > 256) return 2;
    pthread_t tid[256];
    double results[256][2], total = 0;
    for (int t = 0; t < threads; t++) pthread_create(&tid[t], NULL, chains, results[t]);
    for (int t = 0; t < threads; t++) {
        pthread_join(tid[t], NULL);
        total += results[t][0];
    }
    printf("{\"threads\": %d, \"lanes\": %d, \"gflops\": %.1f, \"check\": %g}\n", threads, LANES, total,
           results[0][1]);
    return 0;
}
