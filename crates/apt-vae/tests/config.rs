//! Every validation check of both VAE configs fails with an error naming its key.

use apt_vae::{ImageVaeConfig, WanVaeConfig};

/// One case: an edit that breaks a preset, and text the error must contain.
type Case<C> = (fn(&mut C), &'static str);

/// Applies each edit to `base()` and checks that validation fails with a message containing
/// the expected text.
fn assert_each_names_its_key<C>(
    base: fn() -> C,
    validate: fn(&C) -> apt_vae::Result<()>,
    cases: &[Case<C>],
) {
    for (edit, want) in cases {
        let mut cfg = base();
        edit(&mut cfg);
        let err = validate(&cfg).expect_err(want).to_string();
        assert!(err.contains(want), "expected {want:?} in: {err}");
    }
}

#[test]
fn wan_checks_name_their_keys() {
    assert_each_names_its_key(
        WanVaeConfig::small,
        WanVaeConfig::validate,
        &[
            (|c| c.base_dim = 0, "`base_dim` must be positive (got 0)"),
            (
                |c| c.decoder_base_dim = Some(0),
                "`decoder_base_dim` must be positive (got 0)",
            ),
            (|c| c.z_dim = -1, "`z_dim` must be positive (got -1)"),
            (
                |c| c.num_res_blocks = 0,
                "`num_res_blocks` must be positive (got 0)",
            ),
            (
                |c| c.out_channels = 0,
                "`out_channels` must be positive (got 0)",
            ),
            (
                |c| c.dim_mult = vec![1],
                "`dim_mult` must hold at least two positive multipliers",
            ),
            (
                |c| c.temperal_downsample = vec![true],
                "`temperal_downsample` needs one flag per down stage, 2",
            ),
            (
                |c| c.base_dim = 15,
                "`dim_mult` decoder stage channels must be even",
            ),
            (|c| c.attn_scales = vec![0.5], "`attn_scales` must be empty"),
            (
                |c| c.is_residual = true,
                "`is_residual` true is Wan 2.2's VAE",
            ),
            (
                |c| c.patch_size = Some(2),
                "`patch_size` 2 is Wan 2.2's patchified VAE",
            ),
            (
                |c| c.latents_mean = vec![0.0; 7],
                "`latents_mean` needs z_dim = 8 values (got 7)",
            ),
            (
                |c| c.latents_std = vec![1.0; 9],
                "`latents_std` needs z_dim = 8 values (got 9)",
            ),
            (
                |c| c.latents_std = vec![0.0; 8],
                "`latents_std` values must be positive",
            ),
            (|c| c.dropout = 0.1, "`dropout` must be 0 (got 0.1)"),
            (
                |c| c.scale_factor_temporal = Some(2),
                "`scale_factor_temporal` is 2 but temperal_downsample",
            ),
            (
                |c| c.scale_factor_spatial = Some(8),
                "`scale_factor_spatial` is 8 but dim_mult",
            ),
        ],
    );
}

#[test]
fn image_checks_name_their_keys() {
    assert_each_names_its_key(
        ImageVaeConfig::sd3,
        ImageVaeConfig::validate,
        &[
            (
                |c| c.block_out_channels = vec![],
                "`block_out_channels` must not be empty",
            ),
            (
                |c| c.down_block_types[0] = "AttnDownBlock2D".into(),
                "`down_block_types` must be 4 × \"DownEncoderBlock2D\"",
            ),
            (
                |c| drop(c.up_block_types.pop()),
                "`up_block_types` must be 4 × \"UpDecoderBlock2D\"",
            ),
            (
                |c| c.act_fn = "gelu".into(),
                "`act_fn` \"gelu\" is not supported (expected \"silu\")",
            ),
            (
                |c| c.norm_num_groups = 0,
                "`norm_num_groups` must be positive",
            ),
            (
                |c| c.block_out_channels[1] = 100,
                "`block_out_channels` 100 is not a positive multiple of norm_num_groups = 32",
            ),
            (
                |c| c.in_channels = 0,
                "`in_channels` must be positive (got 0)",
            ),
            (
                |c| c.latent_channels = 0,
                "`latent_channels` must be positive (got 0)",
            ),
            (
                |c| c.layers_per_block = 0,
                "`layers_per_block` must be positive (got 0)",
            ),
            (
                |c| c.scaling_factor = f64::NAN,
                "`scaling_factor` must be positive",
            ),
        ],
    );
}

#[test]
fn configs_round_trip_through_diffusers_json() {
    for cfg in [WanVaeConfig::wan21(), WanVaeConfig::small()] {
        let text = serde_json::to_string(&cfg).unwrap();
        assert_eq!(WanVaeConfig::from_diffusers_json(&text).unwrap(), cfg);
    }
    for cfg in [ImageVaeConfig::sd3(), ImageVaeConfig::flux()] {
        let text = serde_json::to_string(&cfg).unwrap();
        assert_eq!(ImageVaeConfig::from_diffusers_json(&text).unwrap(), cfg);
    }
}
