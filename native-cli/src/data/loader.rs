//! Batches of normalised images, prepared a few ahead on a background thread
//! so that the GPU never waits for them.
//!
//! Training is reproducible to the bit: each epoch's order and each sample's
//! augmentation come from generators seeded by (seed, epoch, slot in epoch),
//! so a run resumed at any [`Position`] yields exactly the batches the
//! uninterrupted run would have, without replaying the ones before.

use super::{Dataset, Normalization};
use engine::rng::Rng;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

/// Batches prepared ahead of the consumer.
const PREFETCH: usize = 4;
/// Seed-derivation tags keeping the shuffle and augmentation streams apart.
const SHUFFLE_STREAM: u64 = 1;
const AUGMENT_STREAM: u64 = 2;

/// Random translation and mirroring of training images: pad `pad` zeros on
/// every side, crop a window of the original size at a uniformly random
/// offset, and mirror it left-right with probability 1/2 if
/// `horizontal_flip`. Padding is added after normalisation, so it reads as
/// the mean rather than as black, as in the paper's Torch code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Augmentation {
    pub pad: usize,
    pub horizontal_flip: bool,
}

impl Augmentation {
    /// The paper's CIFAR-10 augmentation: 4 pixels of padding, random
    /// 32x32 crop, random horizontal flip.
    pub const PAPER: Self = Self {
        pad: 4,
        horizontal_flip: true,
    };
}

/// Where a batch sits in the training stream: batch `batch` of epoch `epoch`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub epoch: u64,
    pub batch: usize,
}

impl Position {
    /// The position of the batch that follows this one: where to resume
    /// once this batch has been consumed.
    pub fn after(self, batches_per_epoch: usize) -> Self {
        if self.batch + 1 < batches_per_epoch {
            Self {
                batch: self.batch + 1,
                ..self
            }
        } else {
            Self {
                epoch: self.epoch + 1,
                batch: 0,
            }
        }
    }
}

/// How [`BatchLoader::train`] draws its batches.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub batch_size: usize,
    pub normalization: Normalization,
    pub augmentation: Option<Augmentation>,
    pub seed: u64,
    /// The first batch to produce: `Position::default()` for a fresh run.
    pub start: Position,
}

/// Images `batch x channels x height x width`, normalised (and augmented in
/// training), with their labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub images: Vec<f32>,
    pub labels: Vec<u32>,
    pub position: Position,
}

/// An iterator of batches prepared on a background thread; dropping it stops
/// the thread.
pub struct BatchLoader {
    batches: Option<Receiver<Batch>>,
    worker: Option<JoinHandle<()>>,
    batches_per_epoch: usize,
}

impl BatchLoader {
    /// An endless stream of training batches: every epoch visits the images
    /// in a fresh random order, in `len / batch_size` full batches; the
    /// remaining `len % batch_size` images of that order sit the epoch out
    /// (another epoch's order gives them their turn), so that every step has
    /// the same batch size.
    pub fn train(dataset: Arc<Dataset>, options: TrainOptions) -> Self {
        let batch_size = options.batch_size;
        assert!(batch_size > 0, "batch size must be positive");
        let batches_per_epoch = dataset.len / batch_size;
        assert!(
            batches_per_epoch > 0,
            "batch size {batch_size} exceeds the {} training images",
            dataset.len
        );
        assert!(
            options.start.batch < batches_per_epoch,
            "start batch {} is past the {batches_per_epoch} batches of an epoch",
            options.start.batch
        );
        Self::spawn(batches_per_epoch, move |sender| {
            let augment = options.augmentation.map(|a| (a, options.seed));
            let mut position = options.start;
            let mut order = epoch_order(options.seed, position.epoch, dataset.len);
            loop {
                let indices = &order[position.batch * batch_size..][..batch_size];
                let batch = assemble(&dataset, &options.normalization, indices, position, augment);
                if sender.send(batch).is_err() {
                    return;
                }
                let next = position.after(batches_per_epoch);
                if next.epoch != position.epoch {
                    order = epoch_order(options.seed, next.epoch, dataset.len);
                }
                position = next;
            }
        })
    }

    /// Every image once, in order, without augmentation; the last batch holds
    /// the remainder and may be short. Positions count batches in epoch 0.
    pub fn eval(dataset: Arc<Dataset>, batch_size: usize, normalization: Normalization) -> Self {
        assert!(batch_size > 0, "batch size must be positive");
        Self::spawn(dataset.len.div_ceil(batch_size), move |sender| {
            let order: Vec<usize> = (0..dataset.len).collect();
            for (batch, indices) in order.chunks(batch_size).enumerate() {
                let position = Position { epoch: 0, batch };
                if sender
                    .send(assemble(&dataset, &normalization, indices, position, None))
                    .is_err()
                {
                    return;
                }
            }
        })
    }

    /// Batches in one epoch: full ones in training, all in evaluation.
    pub fn batches_per_epoch(&self) -> usize {
        self.batches_per_epoch
    }

    fn spawn(batches_per_epoch: usize, produce: impl FnOnce(SyncSender<Batch>) + Send + 'static) -> Self {
        let (sender, receiver) = sync_channel(PREFETCH);
        let worker = std::thread::Builder::new()
            .name("batch-loader".into())
            .spawn(move || produce(sender))
            .expect("spawning the batch loader thread");
        Self {
            batches: Some(receiver),
            worker: Some(worker),
            batches_per_epoch,
        }
    }
}

impl Iterator for BatchLoader {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let batch = self.batches.as_ref()?.recv().ok();
        if batch.is_none() {
            // The worker has finished (evaluation) or panicked: surface a panic here.
            self.batches = None;
            if let Some(worker) = self.worker.take()
                && let Err(panic) = worker.join()
            {
                std::panic::resume_unwind(panic);
            }
        }
        batch
    }
}

impl Drop for BatchLoader {
    fn drop(&mut self) {
        // Closing the channel makes the worker's next send fail, so it exits.
        self.batches = None;
        if let Some(worker) = self.worker.take() {
            // A panic of the worker is not re-raised while dropping.
            let _ = worker.join();
        }
    }
}

/// A seed for one purpose, derived from the run's seed and the path to it
/// (stream tag, epoch, ...), by chaining SplitMix64.
fn derive_seed(seed: u64, path: &[u64]) -> u64 {
    path.iter().fold(seed, |h, &p| Rng::new(h ^ p).next_u64())
}

/// The image order of one training epoch: a Fisher-Yates shuffle.
fn epoch_order(seed: u64, epoch: u64, len: usize) -> Vec<usize> {
    let mut rng = Rng::new(derive_seed(seed, &[SHUFFLE_STREAM, epoch]));
    let mut order: Vec<usize> = (0..len).collect();
    for i in (1..len).rev() {
        order.swap(i, rng.below(i + 1));
    }
    order
}

/// Normalises (and, given an augmentation and seed, augments) the images at
/// `indices` into one batch.
fn assemble(
    dataset: &Dataset,
    normalization: &Normalization,
    indices: &[usize],
    position: Position,
    augment: Option<(Augmentation, u64)>,
) -> Batch {
    let n = dataset.image_len();
    let shape = (dataset.channels, dataset.height, dataset.width);
    let mut images = vec![0.0; indices.len() * n];
    let mut normalized = vec![0.0; n];
    for (slot, (&index, out)) in indices.iter().zip(images.chunks_exact_mut(n)).enumerate() {
        let Some((augmentation, seed)) = augment else {
            normalization.apply_into(dataset.image(index), dataset.channels, out);
            continue;
        };
        normalization.apply_into(dataset.image(index), dataset.channels, &mut normalized);
        let slot_in_epoch = (position.batch * indices.len() + slot) as u64;
        let mut rng = Rng::new(derive_seed(seed, &[AUGMENT_STREAM, position.epoch, slot_in_epoch]));
        let offsets = 2 * augmentation.pad + 1;
        let offset = (rng.below(offsets), rng.below(offsets));
        let flip = augmentation.horizontal_flip && rng.below(2) == 1;
        crop_and_flip(&normalized, shape, augmentation.pad, offset, flip, out);
    }
    Batch {
        images,
        labels: indices.iter().map(|&i| dataset.labels[i]).collect(),
        position,
    }
}

/// Writes into `out` the `height x width` window at `(dy, dx)` of `image`
/// padded with `pad` zeros on every side, mirrored left-right if `flip`.
fn crop_and_flip(
    image: &[f32],
    (channels, height, width): (usize, usize, usize),
    pad: usize,
    (dy, dx): (usize, usize),
    flip: bool,
    out: &mut [f32],
) {
    let plane = height * width;
    for c in 0..channels {
        for y in 0..height {
            for x in 0..width {
                let crop_x = if flip { width - 1 - x } else { x };
                // Coordinates in the unpadded image; out of range reads padding.
                let (sy, sx) = ((y + dy).wrapping_sub(pad), (crop_x + dx).wrapping_sub(pad));
                out[c * plane + y * width + x] = if sy < height && sx < width {
                    image[c * plane + sy * width + sx]
                } else {
                    0.0
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `len` one-channel 2x3 images; image i's pixels are 10 i + 0..6 and
    /// its label is i % 3.
    fn numbered(len: usize) -> Arc<Dataset> {
        let images = (0..len).flat_map(|i| (0..6).map(move |p| (10 * i + p) as u8)).collect();
        let labels = (0..len).map(|i| (i % 3) as u32).collect();
        Arc::new(Dataset::new(
            images,
            labels,
            (1, 2, 3),
            vec!["a".into(), "b".into(), "c".into()],
        ))
    }

    /// Maps pixel p to p / 255: a test can read the source image back.
    fn identity() -> Normalization {
        Normalization::PerChannel {
            mean: vec![0.0],
            std: vec![1.0],
        }
    }

    fn train(dataset: &Arc<Dataset>, seed: u64, start: Position, augmentation: Option<Augmentation>) -> BatchLoader {
        let options = TrainOptions {
            batch_size: 3,
            normalization: identity(),
            augmentation,
            seed,
            start,
        };
        BatchLoader::train(dataset.clone(), options)
    }

    /// Which source image each image of a batch is (from its first pixel).
    fn sources(batch: &Batch) -> Vec<usize> {
        batch
            .images
            .chunks(6)
            .map(|im| (im[0] * 255.0 / 10.0).round() as usize)
            .collect()
    }

    #[test]
    fn same_seed_gives_identical_batches_and_another_seed_differs() {
        let data = numbered(10);
        let augment = Some(Augmentation::PAPER);
        let a: Vec<Batch> = train(&data, 7, Position::default(), augment).take(7).collect();
        let b: Vec<Batch> = train(&data, 7, Position::default(), augment).take(7).collect();
        let c: Vec<Batch> = train(&data, 8, Position::default(), augment).take(7).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn resuming_at_any_position_reproduces_the_uninterrupted_run() {
        let data = numbered(10);
        let augment = Some(Augmentation {
            pad: 1,
            horizontal_flip: true,
        });
        let fresh: Vec<Batch> = train(&data, 3, Position::default(), augment).take(9).collect();
        let positions: Vec<Position> = fresh.iter().map(|b| b.position).collect();
        assert_eq!(
            positions[2..4],
            [Position { epoch: 0, batch: 2 }, Position { epoch: 1, batch: 0 }]
        );
        for k in 0..6 {
            let resumed: Vec<Batch> = train(&data, 3, fresh[k].position, augment).take(3).collect();
            assert_eq!(resumed, fresh[k..k + 3], "resumed at batch {k}");
        }
    }

    #[test]
    fn each_epoch_is_a_new_shuffle_of_distinct_images_in_full_batches() {
        let data = numbered(10);
        let batches: Vec<Batch> = train(&data, 1, Position::default(), None).take(6).collect();
        let epochs: Vec<Vec<usize>> = batches
            .chunks(3)
            .map(|e| e.iter().flat_map(sources).collect())
            .collect();
        for epoch in &epochs {
            let mut seen = epoch.clone();
            seen.sort();
            seen.dedup();
            assert_eq!(seen.len(), 9, "9 distinct images of 10 per epoch: {epoch:?}");
        }
        assert_ne!(epochs[0], epochs[1]);
        for batch in &batches {
            let labels: Vec<u32> = sources(batch).iter().map(|&i| (i % 3) as u32).collect();
            assert_eq!(batch.labels, labels);
        }
    }

    #[test]
    fn eval_visits_every_image_in_order_with_a_short_last_batch() {
        let data = numbered(7);
        let normalization = Normalization::PerChannel {
            mean: vec![0.1],
            std: vec![0.5],
        };
        let loader = BatchLoader::eval(data.clone(), 3, normalization.clone());
        assert_eq!(loader.batches_per_epoch(), 3);
        let batches: Vec<Batch> = loader.collect();
        assert_eq!(batches.iter().map(|b| b.labels.len()).collect::<Vec<_>>(), [3, 3, 1]);
        let images: Vec<f32> = batches.iter().flat_map(|b| b.images.clone()).collect();
        let pixels = (0..7).flat_map(|i| (0..6).map(move |p| 10 * i + p));
        let want: Vec<f64> = pixels.map(|p| (p as f64 / 255.0 - 0.1) / 0.5).collect();
        engine::testing::assert_close("eval images", &images, &want, 1e-6, 1e-6);
        assert_eq!(batches[2].position, Position { epoch: 0, batch: 2 });
    }

    #[test]
    fn crop_of_the_padded_image_and_flip_move_pixels_as_drawn() {
        // 1 channel, 2x3: 1 2 3 / 4 5 6, padded by 1 to 4x5.
        let image = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let crop = |offset, flip| {
            let mut out = [f32::NAN; 6];
            crop_and_flip(&image, (1, 2, 3), 1, offset, flip, &mut out);
            out
        };
        assert_eq!(crop((1, 1), false), image, "centre crop is the image");
        assert_eq!(crop((0, 0), false), [0.0, 0.0, 0.0, 0.0, 1.0, 2.0], "top-left window");
        assert_eq!(
            crop((2, 2), false),
            [5.0, 6.0, 0.0, 0.0, 0.0, 0.0],
            "bottom-right window"
        );
        assert_eq!(crop((1, 1), true), [3.0, 2.0, 1.0, 6.0, 5.0, 4.0], "mirrored");
        assert_eq!(
            crop((1, 0), true),
            [2.0, 1.0, 0.0, 5.0, 4.0, 0.0],
            "shifted right then mirrored"
        );
    }

    #[test]
    fn augmented_images_are_crops_and_flips_of_their_source() {
        let data = numbered(10);
        let pad = 1;
        let mut seen = std::collections::HashSet::new();
        for batch in train(
            &data,
            5,
            Position::default(),
            Some(Augmentation {
                pad,
                horizontal_flip: true,
            }),
        )
        .take(30)
        {
            for (image, &label) in batch.images.chunks(6).zip(&batch.labels) {
                // Find the (source, offset, flip) that produced this image.
                let found = (0..10).filter(|i| i % 3 == label as usize).find_map(|i| {
                    let source = identity().apply(data.image(i), 1);
                    let candidates = (0..3).flat_map(|dy| (0..3).flat_map(move |dx| [(dy, dx, false), (dy, dx, true)]));
                    candidates.into_iter().find(|&(dy, dx, flip)| {
                        let mut out = [0.0; 6];
                        crop_and_flip(&source, (1, 2, 3), pad, (dy, dx), flip, &mut out);
                        out == image
                    })
                });
                seen.insert(found.expect("image is a crop of a source with its label"));
            }
        }
        // 270 draws from 18 equally likely (offset, flip) pairs; a few may
        // coincide as images, but not most of them.
        assert!(seen.len() >= 14, "only {} distinct transforms: {seen:?}", seen.len());
    }
}
