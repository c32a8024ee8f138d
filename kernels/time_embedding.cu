// The DiT's sinusoidal time embedding: out = [cos(t·ω_j), sin(t·ω_j)], ω_j = 10000^(−j/half),
// angles in f64 as upstream (wan-architecture.md §1.4), results rounded to f32.
//
// Tile: one thread per frequency (half = 128 in the DiT: a single block). The kernel runs once
// per sampling step on 256 values; f64 costs nothing here and matches the reference exactly.
extern "C" __global__ void sinusoidal_embedding_f32(double t, float *__restrict__ out, int half) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= half) return;
    const double arg = t * pow(10000.0, -static_cast<double>(j) / half);
    out[j] = static_cast<float>(cos(arg));
    out[half + j] = static_cast<float>(sin(arg));
}
