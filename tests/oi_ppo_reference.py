"""open-instruct's PPO math, vendored verbatim for `tests/test_rl_math.py` to run beside `tulu_kit.losses`.

Source: github.com/allenai/open-instruct at commit 9502f163 (Tulu 3's PPO; its math equals 9c2d44be):
`open_instruct/model_utils.py` L158-191 (`first_true_indices`) and L364-382 (`truncate_response`);
`open_instruct/ppo_vllm_thread_ray_gtrl.py` L129 (`INVALID_LOGPROB`), L470-503 (`masked_mean`, `masked_var`,
`masked_whiten`), L1203-1208 (where a response ends), L1273-1326 (masks, rewards, GAE, whitening) L1354-1363 and L1375-1381
(the value and policy losses). Only the indentation of the in-loop lines changed (they sit inside functions here,
which take what the loop had in scope as arguments). Apache-2.0, (c) the open-instruct authors.
"""
# ruff: noqa
# fmt: off

import torch

INVALID_LOGPROB = 1.0


def first_true_indices(bools: torch.Tensor, dtype=torch.long) -> torch.Tensor:
    """
    Finds the index of the first `True` value in each row of a boolean tensor. If no `True` value exists in a row,
    it returns the length of the row.

    Args:
        bools (torch.Tensor): A boolean tensor of shape (batch_size, sequence_length), where `True` values indicate
                              the positions of interest.
        dtype (torch.dtype): The data type to use for the output indices (default is torch.long).

    Returns:
        torch.Tensor: A tensor of shape (batch_size,) containing the index of the first `True` value in each row.
                      If a row has no `True` value, the index will be the length of the row.
    """

    # Get the length of each row (i.e., the number of columns in the last dimension)
    # row_len is a scalar representing the length of each sequence (sequence_length)
    row_len = bools.size(-1)

    # Calculate the index positions for the first `True` in each row
    # ~bools: Invert the boolean values (True becomes False and vice versa)
    # ~bools.type(dtype): Convert the inverted boolean tensor to the specified dtype (0 for True, 1 for False)
    # row_len * (~bools).type(dtype): For `False` values, this will give `row_len`, for `True` values it gives 0.
    # torch.arange(row_len, dtype=dtype, device=bools.device): Generates a tensor with values [0, 1, 2, ..., row_len-1]
    # for each row. Shape: (sequence_length,)
    # zero_or_index: Shape (batch_size, sequence_length). This tensor contains the indices for `True` values and `row_len`
    # for `False` values.
    zero_or_index = row_len * (~bools).type(dtype) + torch.arange(row_len, dtype=dtype, device=bools.device)

    # Return the minimum value in each row (i.e., the first `True` index or `row_len` if none exist)
    # torch.min(zero_or_index, dim=-1).values: This returns the minimum value in each row, which corresponds to the first
    # `True` value's index or `row_len` if there is no `True` in that row.
    # The returned tensor has shape (batch_size,)
    return torch.min(zero_or_index, dim=-1).values


def truncate_response(stop_token_id: int, pad_token_id: int, responses: torch.Tensor):
    """
    Truncates the responses at the first occurrence of the stop token, filling the rest with pad tokens.
    Args:
        stop_token_id (`int`):
            The token ID representing the stop token where truncation occurs.
        pad_token_id (`int`):
            The token ID representing the pad token used to fill the truncated responses.
        responses (`torch.Tensor`):
            The tensor containing the responses to be truncated.
    Returns:
        `torch.Tensor`:
            The truncated responses tensor with pad tokens filled after the stop token.
    """
    trunc_idxs = first_true_indices(responses == stop_token_id).unsqueeze(-1)
    new_size = [1] * (len(responses.size()) - 1) + [responses.shape[1]]
    idxs = torch.arange(responses.shape[1], device=responses.device).view(*new_size)
    postprocessed_responses = torch.masked_fill(responses, idxs > trunc_idxs, pad_token_id)
    return postprocessed_responses


def masked_mean(values: torch.Tensor, mask: torch.Tensor, axis: bool | None = None) -> torch.Tensor:
    """Compute mean of tensor with a masked values."""
    if axis is not None:
        return (values * mask).sum(axis=axis) / mask.sum(axis=axis)
    else:
        return (values * mask).sum() / mask.sum()


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Compute variance of tensor with masked values."""
    mean = masked_mean(values, mask)
    centered_values = values - mean
    variance = masked_mean(centered_values**2, mask)
    if unbiased:
        mask_sum = mask.sum()
        if mask_sum == 0:
            raise ValueError(
                "The sum of the mask is zero, which can happen when `mini_batch_size=1`;"
                "try increase the `mini_batch_size` or `gradient_accumulation_steps`"
            )
        # note that if mask_sum == 1, then there is a division by zero issue
        # to avoid it you just need to use a larger minibatch_size
        bessel_correction = mask_sum / (mask_sum - 1)
        variance = variance * bessel_correction
    return variance


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Whiten values with masked values."""
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened += mean
    return whitened


def sequence_lengths_of(args, tokenizer, query, response):  # L1201-1208
    postprocessed_response = response
    if args.stop_token_id is not None:  # handle the edge case when stop_token_id exists but is 0
        postprocessed_response = truncate_response(
            args.stop_token_id, tokenizer.pad_token_id, response
        )
    # Response Processing 2. run reward model on the truncated responses
    postprocessed_query_response = torch.cat((query, postprocessed_response), 1)
    sequence_length = first_true_indices(postprocessed_response == tokenizer.pad_token_id) - 1
    return postprocessed_response, sequence_length


def advantages_and_returns(args, responses, postprocessed_responses, sequence_lengths, logprobs, ref_logprobs, values, scores):  # L1273-1326
    contain_stop_token = torch.any(postprocessed_responses == args.stop_token_id, dim=-1)
    # NOTE: only apply the stop token filter if the response is long enough
    # otherwise the model could learn to generate the first token as the stop token
    contain_stop_token = contain_stop_token & (sequence_lengths >= args.min_response_length)
    if args.non_stop_penalty:
        scores = torch.where(
            contain_stop_token, scores, torch.full_like(scores, args.penalty_reward_value)
        )

    # be very careful with `padding_mask_p1`; see https://excalidraw.com/#json=LWnzG4w2k5DjF_EOL_xPt,e2w3a-hFJ_gX5vOfeyXGTw
    response_idxs = torch.arange(responses.shape[1], device=responses.device).repeat(responses.shape[0], 1)
    padding_mask = response_idxs > sequence_lengths.unsqueeze(1)
    logprobs = torch.masked_fill(logprobs, padding_mask, INVALID_LOGPROB)
    ref_logprobs = torch.masked_fill(ref_logprobs, padding_mask, INVALID_LOGPROB)
    sequence_lengths_p1 = sequence_lengths + 1
    padding_mask_p1 = response_idxs > (sequence_lengths_p1.unsqueeze(1))
    values = torch.masked_fill(values, padding_mask_p1, 0)

    # 4. compute rewards
    kl1 = logprobs - ref_logprobs
    kl2 = (kl1) ** 2 / 2
    kl3 = (-kl1).exp() - 1 + kl1
    if args.kl_estimator == "kl1":
        kl = kl1
    elif args.kl_estimator == "kl2":
        kl = kl2
    elif args.kl_estimator == "kl3":
        kl = kl3
    non_score_reward = -args.beta * kl
    non_score_reward_sum = non_score_reward.sum(1)
    rlhf_reward = scores + non_score_reward_sum
    rewards = non_score_reward.clone()
    actual_start = torch.arange(rewards.size(0), device=rewards.device)
    actual_end = torch.where(sequence_lengths_p1 < rewards.size(1), sequence_lengths_p1, sequence_lengths)
    rewards[[actual_start, actual_end]] += scores

    # 5. whiten rewards
    if args.whiten_rewards:
        rewards = masked_whiten(rewards, mask=~padding_mask_p1, shift_mean=False)
        rewards = torch.masked_fill(rewards, padding_mask_p1, 0)

    # 6. compute advantages and returns
    lastgaelam = 0
    advantages_reversed = []
    gen_length = responses.shape[1]
    for t in reversed(range(gen_length)):
        nextvalues = values[:, t + 1] if t < gen_length - 1 else 0.0
        delta = rewards[:, t] + args.gamma * nextvalues - values[:, t]
        lastgaelam = delta + args.gamma * args.lam * lastgaelam
        advantages_reversed.append(lastgaelam)
    advantages = torch.stack(advantages_reversed[::-1], axis=1)
    returns = advantages + values
    advantages = masked_whiten(advantages, ~padding_mask)
    advantages = torch.masked_fill(advantages, padding_mask, 0)
    return rewards, advantages, returns, values, padding_mask, padding_mask_p1, contain_stop_token


def losses(args, vpred_temp, new_logprobs, mb_values, mb_return, mb_logprobs, mb_advantage, mb_padding_mask_p1, padding_mask, micro_batch_inds, context_length):  # L1354-1363, L1375-1381
    vpred_temp = vpred_temp[0]
    vpred = vpred_temp[:, context_length - 1 : -1].squeeze(-1)
    vpred = torch.masked_fill(vpred, mb_padding_mask_p1, 0)
    vpredclipped = torch.clamp(
        vpred, mb_values - args.cliprange_value, mb_values + args.cliprange_value
    )
    vf_losses1 = torch.square(vpred - mb_return)
    vf_losses2 = torch.square(vpredclipped - mb_return)
    vf_loss_max = torch.max(vf_losses1, vf_losses2)
    vf_loss = 0.5 * masked_mean(vf_loss_max, ~mb_padding_mask_p1)
    new_logprobs = torch.masked_fill(new_logprobs, padding_mask[micro_batch_inds], INVALID_LOGPROB)
    logprobs_diff = new_logprobs - mb_logprobs
    ratio = torch.exp(logprobs_diff)
    pg_losses = -mb_advantage * ratio
    pg_losses2 = -mb_advantage * torch.clamp(ratio, 1.0 - args.cliprange, 1.0 + args.cliprange)
    pg_loss_max = torch.max(pg_losses, pg_losses2)
    pg_loss = masked_mean(pg_loss_max, ~padding_mask[micro_batch_inds])
    return vf_loss, pg_loss
