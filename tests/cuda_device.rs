//! The CUDA runtime seen from outside, in every build: with a GPU the device list and a round
//! trip through device memory; without one (no `cuda` feature, no driver, no device) every entry
//! returns a typed error and the test prints why it skipped the GPU checks.

use wanrt::backend::{cuda, Device};
use wanrt::tensor::{DType, Tensor};
use wanrt::Error;

/// The devices, or `None` after printing why there are none.
fn devices() -> Option<Vec<wanrt::backend::DeviceInfo>> {
    match cuda::list_devices() {
        Ok(d) if !d.is_empty() => Some(d),
        Ok(_) => {
            println!("SKIP: the CUDA driver reports no device");
            None
        }
        Err(e) => {
            assert!(
                matches!(e, Error::CudaNotCompiled | Error::Device(_)),
                "{e}"
            );
            println!("SKIP: no CUDA device: {e}");
            None
        }
    }
}

#[test]
fn without_a_device_every_entry_is_a_typed_error() {
    if devices().is_some() {
        return;
    }
    let x = Tensor::from_f32(vec![1.0, 2.0], [2]).unwrap();
    for r in [x.to_device(Device::Cuda(0)), x.to_device(Device::Cuda(7))] {
        let e = r.unwrap_err();
        assert!(
            matches!(e, Error::CudaNotCompiled | Error::Device(_)),
            "{e}"
        );
    }
    assert!(cuda::device_available().is_err());
}

#[test]
fn host_tensors_round_trip_through_every_device() {
    let Some(devs) = devices() else { return };
    for d in devs {
        println!(
            "cuda:{} {} sm_{}{} {} MiB",
            d.ordinal,
            d.name,
            d.compute_capability.0,
            d.compute_capability.1,
            d.total_memory >> 20
        );
        assert!(d.total_memory > 0 && d.compute_capability.0 >= 5);
        for dtype in [DType::F32, DType::BF16, DType::F8E4M3, DType::U8] {
            let x = Tensor::from_f32((0..1001).map(|i| i as f32 * 0.25).collect(), [7, 11, 13])
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let on = x.to_device(Device::Cuda(d.ordinal)).unwrap();
            assert_eq!(on.device(), Device::Cuda(d.ordinal));
            assert!(on.raw_bytes().is_err());
            let back = on.to_device(Device::Cpu).unwrap();
            assert_eq!((back.dims(), back.dtype()), (x.dims(), dtype));
            assert_eq!(back.raw_bytes().unwrap(), x.raw_bytes().unwrap());
        }
    }
}

#[test]
fn ops_refuse_inputs_on_two_devices() {
    let Some(devs) = devices() else { return };
    let x = Tensor::from_f32(vec![1.0; 6], [2, 3]).unwrap();
    let on = x.to_device(Device::Cuda(devs[0].ordinal)).unwrap();
    for r in [
        x.add(&on),
        on.mul(&x),
        wanrt::tensor::ops::cat(&[&x, &on], 0),
    ] {
        let e = r.unwrap_err();
        assert!(matches!(e, Error::DeviceMismatch { .. }), "{e}");
        assert!(e.to_string().contains("cpu, cuda:"), "{e}");
    }
}
