//! Input normalisation, stored with the weights so that training, evaluation,
//! `classify` and the browser all preprocess identically.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalization {
    /// `(pixel / 255 - mean[c]) / std[c]`.
    PerChannel { mean: Vec<f32>, std: Vec<f32> },
    /// `pixel / 255 - mean[c, y, x]`: the paper's per-pixel mean subtraction.
    PerPixelMean { mean: Vec<f32> },
}

impl Normalization {
    /// ImageNet statistics (torchvision's pretrained models; also used by the
    /// published CIFAR-10 reference weights).
    pub fn imagenet() -> Self {
        Self::PerChannel {
            mean: vec![0.485, 0.456, 0.406],
            std: vec![0.229, 0.224, 0.225],
        }
    }

    /// Normalises one CHW image of bytes into `out`.
    pub fn apply_into(&self, image: &[u8], channels: usize, out: &mut [f32]) {
        assert_eq!(image.len(), out.len(), "normalisation input and output lengths differ");
        let plane = image.len() / channels.max(1);
        match self {
            Self::PerChannel { mean, std } => {
                for (i, (&p, o)) in image.iter().zip(out.iter_mut()).enumerate() {
                    let c = i / plane;
                    *o = (p as f32 / 255.0 - mean[c]) / std[c];
                }
            }
            Self::PerPixelMean { mean } => {
                assert_eq!(mean.len(), image.len(), "per-pixel mean of another image size");
                for ((&p, &m), o) in image.iter().zip(mean).zip(out.iter_mut()) {
                    *o = p as f32 / 255.0 - m;
                }
            }
        }
    }

    /// Normalises one CHW image of bytes.
    pub fn apply(&self, image: &[u8], channels: usize) -> Vec<f32> {
        let mut out = vec![0.0; image.len()];
        self.apply_into(image, channels, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_channel_and_per_pixel_normalisation_follow_their_formulas() {
        let image = [0u8, 255, 51, 102]; // 2 channels of 2 pixels
        let n = Normalization::PerChannel {
            mean: vec![0.5, 0.2],
            std: vec![0.5, 0.1],
        };
        close(&n.apply(&image, 2), &[-1.0, 1.0, 0.0, 2.0]);
        let n = Normalization::PerPixelMean {
            mean: vec![0.0, 1.0, 0.2, 0.0],
        };
        close(&n.apply(&image, 2), &[0.0, 0.0, 0.0, 0.4]);
    }

    fn close(got: &[f32], want: &[f64]) {
        crate::testing::assert_close("normalised", got, want, 1e-6, 1e-6);
    }
}
