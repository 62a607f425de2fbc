//! The CNN's memory-bound passes over feature maps: im2col and its adjoint,
//! bias + ReLU + 2×2 max-pool and its gradient, and layout changes. Maps are
//! channel-major (`[c][b][y][x]`) unless a [`Layout`] says otherwise.
//!
//! Each pass splits its output by channel (or by patch-matrix row) over the
//! thread pool when more than one thread is allowed; every output element is
//! computed by one task in a fixed order, so results never depend on the
//! thread count.

use rayon::prelude::*;

use super::matmul::Threads;

/// Runs `body(index, chunk)` over `out`'s consecutive chunks of `len`
/// floats, on the thread pool when `threads` allows more than one.
fn per_chunk(out: &mut [f32], len: usize, threads: Threads, body: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if threads.0 > 1 {
        out.par_chunks_mut(len).enumerate().for_each(|(i, chunk)| body(i, chunk));
    } else {
        out.chunks_mut(len).enumerate().for_each(|(i, chunk)| body(i, chunk));
    }
}

/// How a stack of feature maps of one size lies in memory.
#[derive(Clone, Copy)]
pub enum Layout {
    /// `[b][c][y][x]`, with `channels` channels: the input batch.
    SampleMajor { channels: usize },
    /// `[c][b][y][x]`, with `batch` samples.
    ChannelMajor { batch: usize },
}

impl Layout {
    /// Where map `(c, b)` of `hw` floats starts.
    fn map_at(self, c: usize, b: usize, hw: usize) -> usize {
        match self {
            Layout::SampleMajor { channels } => (b * channels + c) * hw,
            Layout::ChannelMajor { batch } => (c * batch + b) * hw,
        }
    }
}

/// Sizes of one convolution block's maps: `batch` samples of `h × w`.
#[derive(Clone, Copy)]
pub struct Maps {
    pub batch: usize,
    pub h: usize,
    pub w: usize,
}

impl Maps {
    /// Floats per channel: the whole batch's maps of that channel.
    fn per_channel(self) -> usize {
        self.batch * self.h * self.w
    }
}

/// Writes the `cin·9 × batch·h·w` patch matrix of `input` (zero padding 1):
/// row `ci·9 + ky·3 + kx`, column `(b·h + y)·w + x` holds `input[ci, b, y+ky−1, x+kx−1]`.
pub fn im2col(input: &[f32], layout: Layout, maps: Maps, cols: &mut [f32], threads: Threads) {
    let Maps { batch, h, w } = maps;
    per_chunk(cols, maps.per_channel(), threads, |row, out| {
        let (ci, ky, kx) = (row / 9, row % 9 / 3, row % 3);
        for b in 0..batch {
            let map = &input[layout.map_at(ci, b, h * w)..][..h * w];
            for y in 0..h {
                let dst = &mut out[(b * h + y) * w..][..w];
                let Some(iy) = (y + ky).checked_sub(1).filter(|&iy| iy < h) else {
                    dst.fill(0.0);
                    continue;
                };
                let src = &map[iy * w..][..w];
                match kx {
                    0 => {
                        dst[0] = 0.0;
                        dst[1..].copy_from_slice(&src[..w - 1]);
                    }
                    1 => dst.copy_from_slice(src),
                    _ => {
                        dst[..w - 1].copy_from_slice(&src[1..]);
                        dst[w - 1] = 0.0;
                    }
                }
            }
        }
    });
}

/// The adjoint of [`im2col`] into channel-major maps: sums the patch
/// matrix's gradient back onto the input's gradient (overwriting it).
pub fn col2im(grad_cols: &[f32], maps: Maps, grad_input: &mut [f32], threads: Threads) {
    let Maps { batch, h, w } = maps;
    let per_row = maps.per_channel();
    per_chunk(grad_input, per_row, threads, |ci, dst_maps| {
        dst_maps.fill(0.0);
        for tap in 0..9 {
            let (ky, kx) = (tap / 3, tap % 3);
            let src_rows = &grad_cols[(ci * 9 + tap) * per_row..][..per_row];
            for b in 0..batch {
                let map = &mut dst_maps[b * h * w..][..h * w];
                for y in 0..h {
                    let Some(iy) = (y + ky).checked_sub(1).filter(|&iy| iy < h) else { continue };
                    let src = &src_rows[(b * h + y) * w..][..w];
                    let dst = &mut map[iy * w..][..w];
                    match kx {
                        0 => dst[..w - 1].iter_mut().zip(&src[1..]).for_each(|(d, s)| *d += s),
                        1 => dst.iter_mut().zip(src).for_each(|(d, s)| *d += s),
                        _ => dst[1..].iter_mut().zip(&src[..w - 1]).for_each(|(d, s)| *d += s),
                    }
                }
            }
        }
    });
}

/// Adds `bias[c]` to channel `c` of `pre` (in place: the backward pass needs
/// it) and writes the 2×2 max-pool of its ReLU into `pooled`.
pub fn bias_relu_pool(pre: &mut [f32], bias: &[f32], maps: Maps, pooled: &mut [f32], threads: Threads) {
    let Maps { batch, h, w } = maps;
    let (ph, pw) = (h / 2, w / 2);
    let per_channel = maps.per_channel();
    let body = |c: usize, (z, out): (&mut [f32], &mut [f32])| {
        let b = bias[c];
        z.iter_mut().for_each(|v| *v += b);
        for s in 0..batch {
            let map = &z[s * h * w..][..h * w];
            let dst = &mut out[s * ph * pw..][..ph * pw];
            for py in 0..ph {
                let (top, bottom) = (&map[2 * py * w..][..w], &map[(2 * py + 1) * w..][..w]);
                for (px, d) in dst[py * pw..][..pw].iter_mut().enumerate() {
                    let m = top[2 * px].max(top[2 * px + 1]).max(bottom[2 * px]).max(bottom[2 * px + 1]);
                    *d = m.max(0.0);
                }
            }
        }
    };
    let per_pooled = per_channel / 4;
    if threads.0 > 1 {
        pre.par_chunks_mut(per_channel)
            .zip(pooled.par_chunks_mut(per_pooled))
            .enumerate()
            .for_each(|(c, p)| body(c, p));
    } else {
        pre.chunks_mut(per_channel)
            .zip(pooled.chunks_mut(per_pooled))
            .enumerate()
            .for_each(|(c, p)| body(c, p));
    }
}

/// Gradient of [`bias_relu_pool`] with respect to `pre`, as candle computes
/// it: each element equal to its window's maximum after the ReLU gets the
/// window's gradient times (ties / 4), if the ReLU's input was `>= 0`.
pub fn relu_pool_backward(
    pre: &[f32],
    grad_pooled: &[f32],
    maps: Maps,
    grad_pre: &mut [f32],
    threads: Threads,
) {
    let Maps { batch, h, w } = maps;
    let (ph, pw) = (h / 2, w / 2);
    let per_channel = maps.per_channel();
    per_chunk(grad_pre, per_channel, threads, |c, dz| {
        let z = &pre[c * per_channel..][..per_channel];
        let g = &grad_pooled[c * per_channel / 4..][..per_channel / 4];
        for s in 0..batch {
            for py in 0..ph {
                let (t, bt) = ((s * h + 2 * py) * w, (s * h + 2 * py + 1) * w);
                let (ztop, zbottom) = (&z[t..t + w], &z[bt..bt + w]);
                let (dtop, dbottom) = dz[t..bt + w].split_at_mut(w);
                let grow = &g[(s * ph + py) * pw..][..pw];
                for (px, &gv) in grow.iter().enumerate() {
                    let zs = [ztop[2 * px], ztop[2 * px + 1], zbottom[2 * px], zbottom[2 * px + 1]];
                    let r = zs.map(|v| v.max(0.0));
                    let m = r[0].max(r[1]).max(r[2]).max(r[3]);
                    let hit = [0, 1, 2, 3].map(|i| r[i] == m);
                    let ties = hit.iter().filter(|&&x| x).count();
                    let share = gv * (ties as f32 * 0.25);
                    let d = [0, 1, 2, 3].map(|i| if hit[i] && zs[i] >= 0.0 { share } else { 0.0 });
                    dtop[2 * px] = d[0];
                    dtop[2 * px + 1] = d[1];
                    dbottom[2 * px] = d[2];
                    dbottom[2 * px + 1] = d[3];
                }
            }
        }
    });
}

/// `out[b][c][s] = input[c][b][s]` for `channels × batch` maps of `size`.
pub fn to_sample_major(input: &[f32], channels: usize, batch: usize, size: usize, out: &mut [f32]) {
    for c in 0..channels {
        for b in 0..batch {
            out[(b * channels + c) * size..][..size]
                .copy_from_slice(&input[(c * batch + b) * size..][..size]);
        }
    }
}

/// `out[c][b][s] = input[b][c][s]`: the inverse of [`to_sample_major`].
pub fn to_channel_major(input: &[f32], channels: usize, batch: usize, size: usize, out: &mut [f32]) {
    for c in 0..channels {
        for b in 0..batch {
            out[(c * batch + b) * size..][..size]
                .copy_from_slice(&input[(b * channels + c) * size..][..size]);
        }
    }
}

/// `out[r] = Σ row r` of the row-major `out.len() × (x.len() / out.len())`
/// matrix, summed in eight lanes so it vectorizes (a fixed order all the same).
pub fn row_sums(x: &[f32], out: &mut [f32]) {
    let len = x.len() / out.len().max(1);
    for (o, row) in out.iter_mut().zip(x.chunks_exact(len)) {
        let mut lanes = [0f32; 8];
        let chunks = row.chunks_exact(8);
        let rest = chunks.remainder();
        for chunk in chunks {
            for (l, v) in lanes.iter_mut().zip(chunk) {
                *l += v;
            }
        }
        *o = lanes.iter().sum::<f32>() + rest.iter().sum::<f32>();
    }
}
