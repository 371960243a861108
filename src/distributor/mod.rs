//! Distributor: validates pushed streams per tenant before they reach the ingester.
