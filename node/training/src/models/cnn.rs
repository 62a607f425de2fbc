//! A small conv net for images: Conv3x3-ReLU-MaxPool2 blocks, then one linear
//! layer to the classes. Variables are named `conv00.*`, `conv01.*`, `head.*`.

use candle_core::{Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, Linear, VarBuilder};
use starling_protocol::spec::CnnSpec;

pub struct Cnn {
    input: [usize; 3],
    convs: Vec<Conv2d>,
    head: Linear,
}

impl Cnn {
    pub fn new(spec: &CnnSpec, vb: VarBuilder) -> candle_core::Result<Self> {
        let cfg = Conv2dConfig { padding: 1, ..Default::default() };
        let (mut ch, mut h, mut w) = (spec.input[0], spec.input[1], spec.input[2]);
        let mut convs = Vec::with_capacity(spec.channels.len());
        for (i, &out) in spec.channels.iter().enumerate() {
            convs.push(candle_nn::conv2d(ch, out, 3, cfg, vb.pp(format!("conv{i:02}")))?);
            (ch, h, w) = (out, h / 2, w / 2);
        }
        let head = candle_nn::linear(ch * h * w, spec.classes, vb.pp("head"))?;
        Ok(Self { input: spec.input, convs, head })
    }

    /// Logits for a batch of flat images `(batch, c·h·w)`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let [c, h, w] = self.input;
        let mut x = x.reshape((x.dim(0)?, c, h, w))?;
        for conv in &self.convs {
            x = conv.forward(&x)?.relu()?.max_pool2d(2)?;
        }
        self.head.forward(&x.flatten_from(1)?)
    }
}
