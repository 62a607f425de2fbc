//! A safe, bounds-checked front to the `gemm` crate (the GEMM candle 0.11 runs
//! on the CPU) over strided views of `f32` slices, so the training step can
//! multiply by a transpose without copying it.

use gemm::Parallelism;

/// A read-only matrix view: element `(r, c)` is `data[r·row_stride + c·col_stride]`.
#[derive(Clone, Copy)]
pub struct View<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> View<'a> {
    /// The row-major `rows × cols` matrix at the start of `data`.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        let view = Self { data, rows, cols, row_stride: cols, col_stride: 1 };
        view.check();
        view
    }

    /// `rows × cols` at the start of `data`, row `r` starting at `r·row_stride`:
    /// a block of columns of a wider row-major matrix.
    pub fn strided(data: &'a [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        let view = Self { data, rows, cols, row_stride, col_stride: 1 };
        view.check();
        view
    }

    /// The transpose, as a view of the same memory.
    pub fn t(self) -> Self {
        Self {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    fn check(&self) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride;
            assert!(
                last < self.data.len(),
                "a {}×{} view needs {} floats, has {}",
                self.rows,
                self.cols,
                last + 1,
                self.data.len()
            );
        }
    }
}

/// How many threads a product may use; `gemm` splits the output, never the
/// inner dimension, so a product is bit-identical whatever the count.
#[derive(Clone, Copy, Debug)]
pub struct Threads(pub usize);

impl Threads {
    fn parallelism(self) -> Parallelism {
        if self.0 > 1 {
            Parallelism::Rayon(self.0)
        } else {
            Parallelism::None
        }
    }
}

/// `out = a·b` (or `out += a·b` when `accumulate`), `out` row-major `a.rows × b.cols`.
pub fn matmul(out: &mut [f32], a: View, b: View, accumulate: bool, threads: Threads) {
    assert_eq!(a.cols, b.rows, "inner dimensions differ");
    let (m, n, k) = (a.rows, b.cols, a.cols);
    assert!(out.len() >= m * n, "output holds {} floats, needs {}", out.len(), m * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            out[..m * n].fill(0.0);
        }
        return;
    }
    // SAFETY: every view was checked to lie inside its slice, `out` holds
    // m·n floats, and `out` is a unique borrow so it aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            threads.parallelism(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize, ta: bool, tb: bool) -> Vec<f32> {
        let at = |i: usize, p: usize| if ta { a[p * m + i] } else { a[i * k + p] };
        let bt = |p: usize, j: usize| if tb { b[j * k + p] } else { b[p * n + j] };
        (0..m * n).map(|ij| (0..k).map(|p| at(ij / n, p) * bt(p, ij % n)).sum()).collect()
    }

    #[test]
    fn products_of_transposed_views_match_the_definition() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.3).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.7).cos()).collect();
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let va = if ta { View::rows(&a, k, m).t() } else { View::rows(&a, m, k) };
            let vb = if tb { View::rows(&b, n, k).t() } else { View::rows(&b, k, n) };
            let mut out = vec![1.0; m * n];
            matmul(&mut out, va, vb, false, Threads(1));
            let want = naive(&a, &b, m, k, n, ta, tb);
            for (o, w) in out.iter().zip(&want) {
                assert!((o - w).abs() < 1e-5, "{ta} {tb}: {o} vs {w}");
            }
            matmul(&mut out, va, vb, true, Threads(2));
            for (o, w) in out.iter().zip(&want) {
                assert!((o - 2.0 * w).abs() < 1e-5, "accumulate {ta} {tb}: {o} vs {w}");
            }
        }
    }

    #[test]
    #[should_panic(expected = "needs")]
    fn a_view_past_its_slice_is_refused() {
        View::rows(&[0.0; 5], 2, 3);
    }
}
